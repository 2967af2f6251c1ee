"""Preprocessing outside Triton (``koserve.triton_models.preprocess``): BOS added once, the profile's end ids and stop
words, limits named in errors, NVIDIA's output tensors with a batch dimension."""

from __future__ import annotations

import numpy as np
import pytest

from koserve.errors import InvalidRequestError
from koserve.fixtures import tokenizer_dir
from koserve.triton_models.params import ServingLimits
from koserve.triton_models.preprocess import Preprocessor
from koserve.triton_models.settings import ModelSettings


KOREAN = "안녕하세요, 반갑습니다! 뷁똠햏 🤗\n다음 줄."


def settings(profile: str, family: str) -> ModelSettings:
    return ModelSettings(profile=profile, tokenizer_dir=tokenizer_dir(family),
                         limits=ServingLimits(max_batch_size=8, max_input_len=64, max_seq_len=128))


@pytest.fixture(scope="module", params=[("akallama-70b", "llama3"), ("komt-13b", "llama2")], ids=["llama3", "llama2"])
def pre(request):
    return Preprocessor(settings(*request.param))


def test_preprocessing_adds_bos_once(pre):
    bos = pre.tokenizer.bos_token
    once = pre.engine_inputs("안녕", 8).input_ids.tolist()
    given = pre.engine_inputs(bos + "안녕", 8).input_ids.tolist()
    assert once[0] == pre.tokenizer.bos_id and once.count(pre.tokenizer.bos_id) == 1
    assert given.count(pre.tokenizer.bos_id) == 1


def test_preprocessing_end_ids_and_stop_words_from_profile(pre):
    prepared = pre.engine_inputs("안녕", 8)
    gen = pre.profile.generation
    assert prepared.end_id == gen.end_ids[0]
    flat = prepared.stop_words_list[0].tolist()
    for extra in gen.end_ids[1:]:
        assert extra in flat  # AkaLlama: <|end_of_text|> as a one-token stop word
    if gen.stop_words:
        assert prepared.stop_words_list[1, 0] > 0


def test_preprocessing_limits_are_named(pre):
    with pytest.raises(InvalidRequestError, match="max input length is 64"):
        pre.engine_inputs("가나다 " * 100, 8)
    with pytest.raises(InvalidRequestError, match="max sequence length 128"):
        pre.engine_inputs("안녕", 200)


def test_preprocessing_model_outputs_have_batch_dim(pre):
    out = pre.preprocessing_outputs({
        "QUERY": np.array([["안녕".encode()]], dtype=object),
        "REQUEST_OUTPUT_LEN": np.array([[4]], dtype=np.int32),
        "TEMPERATURE": np.array([[0.5]], dtype=np.float32),
    })
    assert out["INPUT_ID"].shape[0] == 1 and out["STOP_WORDS_IDS"].shape[:2] == (1, 2)
    with pytest.raises(InvalidRequestError, match="temperature"):
        pre.preprocessing_outputs({
            "QUERY": np.array([["안녕".encode()]], dtype=object),
            "REQUEST_OUTPUT_LEN": np.array([[4]], dtype=np.int32),
            "TEMPERATURE": np.array([[-1.0]], dtype=np.float32),
        })
