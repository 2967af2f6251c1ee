"""Generation options through the real server, ensemble and BLS: ``max_tokens``, ``end_id``, request stop words,
``exclude_input_in_output``, and the engine's own ``request_output_len``."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from koserve.server.triton_calls import TEXT_MODELS, grpc_stream, text_inputs
from koserve.text import load_tokenizer


pytestmark = pytest.mark.server


PROMPT = "네 이름은 뭐야?"


def rid() -> str:
    return uuid.uuid4().hex


def replay_ids(endpoints, text):
    tok = load_tokenizer(endpoints.tokenizer_dir)
    return tok, tok.encode(text, add_special_tokens=False)


def expected_replay_text(endpoints, replay_text: str) -> str:
    """What the replay server must answer in full: its text, cut before the profile's stop word (komt: ###)."""
    tok, ids = replay_ids(endpoints, replay_text)
    full = tok.decode(ids)
    if endpoints.profile == "komt-13b":
        full = full[: full.index("###")]
    return full


def assert_clean_pieces(result):
    assert result.error is None, result.error
    for raw in result.raw:
        if isinstance(raw, bytes):
            raw.decode("utf-8")  # strict: never partial UTF-8 on the wire
    assert "\ufffd" not in result.text


# --- generation controls ---------------------------------------------------------------------------------------
@pytest.fixture
def triton_replay(triton_replay_engines):
    """These options run on both engine renderings (C++ backend interface, LLM API step)."""
    return triton_replay_engines


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_max_tokens_is_honoured(triton_replay, replay_text_file, model):
    tok, ids = replay_ids(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    res = grpc_stream(triton_replay.grpc_url, model, text_inputs(PROMPT, 7, stream=False), request_id=rid())
    assert res.error is None, res.error
    # whole characters only: a character the 7th token left incomplete is dropped, never sent as U+FFFD
    assert res.text == tok.decode(ids[:7]).rstrip("\ufffd")


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_end_id_stops_before_it(triton_replay, replay_text_file, model):
    tok, ids = replay_ids(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    cut = next(i for i in range(8, len(ids)) if ids[i] not in ids[:i])
    res = grpc_stream(
        triton_replay.grpc_url, model, text_inputs(PROMPT, 300, end_id=ids[cut]), request_id=rid()
    )
    assert_clean_pieces(res)
    assert res.text == tok.decode(ids[:cut]).rstrip("\ufffd")


def test_request_stop_words_bls_cuts_exactly(triton_replay, replay_text_file):
    text = expected_replay_text(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    res = grpc_stream(
        triton_replay.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, 300, stop_words=["기온은"]), request_id=rid()
    )
    assert_clean_pieces(res)
    assert res.text == text[: text.index("기온은")]


def test_request_stop_words_stop_the_ensemble(triton_replay, replay_text_file):
    """The ensemble's engine stops at a request's stop word and postprocessing removes it from the text, as the BLS
    does (preprocessing passes the request's stop words to postprocessing with the request's start)."""
    text = expected_replay_text(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    res = grpc_stream(
        triton_replay.grpc_url, "ensemble", text_inputs(PROMPT, 300, stop_words=["기온은"]), request_id=rid()
    )
    assert_clean_pieces(res)
    assert text.startswith(res.text)
    assert "내일은" not in res.text and "기온은" not in res.text and text.startswith(res.text + "기온은")


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_exclude_input_in_output_false_echoes_prompt(triton_replay, replay_text_file, model):
    expected = expected_replay_text(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    res = grpc_stream(
        triton_replay.grpc_url, model, text_inputs(PROMPT, 300, stream=False, exclude_input_in_output=False),
        request_id=rid(),
    )
    assert res.error is None, res.error
    assert res.text.startswith(PROMPT)
    assert res.text.endswith(expected)


def test_engine_direct_honours_request_output_len(triton_akallama):
    import tritonclient.grpc as grpcclient

    ids = np.array([[128000, 9906, 1917]], dtype=np.int32)
    inputs = {
        "input_ids": ids,
        "input_lengths": np.array([[3]], dtype=np.int32),
        "request_output_len": np.array([[9]], dtype=np.int32),
        "end_id": np.array([[128009]], dtype=np.int32),
        "runtime_top_k": np.array([[1]], dtype=np.int32),
        "streaming": np.array([[False]], dtype=np.bool_),
    }
    client = grpcclient.InferenceServerClient(triton_akallama.grpc_url)
    try:
        import queue

        q: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: q.put((result, error)), stream_timeout=60)
        tensors = []
        for name, arr in inputs.items():
            t = grpcclient.InferInput(name, list(arr.shape), {np.int32: "INT32", np.bool_: "BOOL"}[arr.dtype.type])
            t.set_data_from_numpy(arr)
            tensors.append(t)
        client.async_stream_infer("tensorrt_llm", tensors, request_id=rid())
        result, error = q.get(timeout=60)
        assert error is None, error
        out = result.as_numpy("output_ids")
        seq = result.as_numpy("sequence_length")
        assert out.shape[-1] == 9 and int(seq.reshape(-1)[0]) == 9
    finally:
        client.stop_stream()
        client.close()
