"""One request parser for the ensemble's preprocessing and the BLS (``koserve.triton_models.params``): a tensor-name
map says where each field comes from; both paths parse the same request to the same ``GenerationRequest`` and name
the client-facing input in their errors."""

from __future__ import annotations

import numpy as np
import pytest

from koserve.errors import InvalidRequestError
from koserve.triton_models.params import (
    PREPROCESSING_TENSORS,
    UNSUPPORTED_INPUTS,
    SamplingParams,
    parse_generation_request,
)
from koserve.triton_models.preprocess import Preprocessor

REQUEST = {
    "text_input": np.array([["안녕".encode()]], dtype=object),
    "max_tokens": np.array([[5]], dtype=np.int32),
    "stop_words": np.array([["###".encode()]], dtype=object),
    "bad_words": np.array([["나쁜".encode()]], dtype=object),
    "end_id": np.array([[2]], dtype=np.int32),
    "pad_id": np.array([[0]], dtype=np.int32),
    "temperature": np.array([[0.7]], dtype=np.float32),
    "top_k": np.array([[40]], dtype=np.int32),
    "top_p": np.array([[0.9]], dtype=np.float32),
    "min_tokens": np.array([[2]], dtype=np.int32),
    "seed": np.array([[7]], dtype=np.uint64),
    "stream": np.array([[True]], dtype=np.bool_),
    "exclude_input_in_output": np.array([[False]], dtype=np.bool_),
    "return_num_input_tokens": np.array([[True]], dtype=np.bool_),
    "return_num_output_tokens": np.array([[True]], dtype=np.bool_),
}


def as_preprocessing(inputs: dict) -> dict:
    return {PREPROCESSING_TENSORS[name]: value for name, value in inputs.items()}


def test_parse_generation_request_defaults():
    req = parse_generation_request({"text_input": np.array([["안녕".encode()]], dtype=object),
                                    "max_tokens": np.array([[5]], dtype=np.int32)})
    assert req.text == "안녕" and req.max_tokens == 5 and not req.stream and req.exclude_input_in_output


def test_ensemble_names_and_preprocessing_names_give_the_same_request():
    ensemble = parse_generation_request(REQUEST)
    preprocessing = parse_generation_request(as_preprocessing(REQUEST), PREPROCESSING_TENSORS)
    assert ensemble == preprocessing
    assert ensemble.stop_words == ("###",) and ensemble.bad_words == ("나쁜",) and ensemble.end_id == 2
    assert ensemble.sampling == SamplingParams(temperature=pytest.approx(0.7), top_k=40, top_p=pytest.approx(0.9),
                                               min_length=2, random_seed=7)
    assert ensemble.stream and not ensemble.exclude_input_in_output
    assert ensemble.return_num_input_tokens and ensemble.return_num_output_tokens


def test_every_field_and_refused_input_has_a_preprocessing_tensor():
    fields = {"text_input", "max_tokens", "stop_words", "bad_words", "end_id", "pad_id", "stream",
              "exclude_input_in_output", "return_num_input_tokens", "return_num_output_tokens"}
    assert fields <= PREPROCESSING_TENSORS.keys()
    unsupported_in_ensemble = set(UNSUPPORTED_INPUTS) - {"num_draft_tokens", "use_draft_logits"}  # BLS only
    assert unsupported_in_ensemble <= PREPROCESSING_TENSORS.keys()
    assert set(Preprocessor.INPUT_TENSORS) == {*PREPROCESSING_TENSORS.values(), "IMAGES"}


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("temperature", np.array([[-1.0]], dtype=np.float32), "temperature"),
    ("top_k", np.array([[1.5]], dtype=np.float32), "input 'top_k' must be an integer tensor"),
    ("stream", np.array([[1]], dtype=np.int32), "input 'stream' must be BOOL"),
    ("max_tokens", np.array([[0]], dtype=np.int32), "max_tokens must be >= 1, got 0"),
    ("lora_task_id", np.array([[3]], dtype=np.uint64), "input 'lora_task_id' is not supported by koserve"),
])
def test_errors_name_the_client_input_on_both_paths(name, value, fragment):
    bad = {**REQUEST, name: value}
    for inputs, names in ((bad, {}), (as_preprocessing(bad), PREPROCESSING_TENSORS)):
        with pytest.raises(InvalidRequestError, match=fragment):
            parse_generation_request(inputs, names)


def test_the_same_options_given_twice_under_old_and_new_names_must_agree():
    both = {**REQUEST, "random_seed": np.array([[8]], dtype=np.uint64)}
    for inputs, names in ((both, {}), (as_preprocessing(both), PREPROCESSING_TENSORS)):
        with pytest.raises(InvalidRequestError, match="'random_seed' .* and 'seed' .* name the same option"):
            parse_generation_request(inputs, names)
