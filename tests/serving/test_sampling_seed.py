"""Sampling seeds and TensorRT-LLM 1.x input names, against the real server (hf mode: a tiny random-weight model, so
sampled tokens vary with the seed).

- No seed given: ``preprocessing`` (ensemble) and the BLS draw a random one per request — three calls at temperature 1
  do not all repeat (TensorRT-LLM's default seed is fixed, so they did).
- A given seed reproduces the answer, as ``random_seed`` (v0.19) or ``seed`` (1.2.1); ``min_length``/``min_tokens``
  likewise name one option; both names with different values are refused by name.
- NVIDIA inputs koserve does not implement are refused by name instead of being ignored.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from koserve.server.triton_calls import TEXT_MODELS, grpc_stream, text_inputs

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(triton_servers, engine_backend):
    return triton_servers("komt-13b", "hf", engine_backend=engine_backend)


def sample(server, model, **extra):
    inputs = text_inputs("안녕하세요", 12, stream=False, temperature=1.0, top_p=1.0, **extra)  # sampling: top_p>0
    res = grpc_stream(server.grpc_url, model, inputs, request_id=f"ks-{uuid.uuid4()}", timeout=60)
    assert res.error is None, res.error
    return res.text


def extra_input(name, value, dtype):
    return {name: np.array([[value]], dtype=dtype)}


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_unseeded_sampling_does_not_repeat(server, model):
    texts = {sample(server, model) for _ in range(3)}
    assert len(texts) > 1, texts


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("name", ["random_seed", "seed"])
def test_a_given_seed_reproduces_the_answer(server, model, name):
    a = sample(server, model, **extra_input(name, 1234, np.uint64))
    b = sample(server, model, **extra_input(name, 1234, np.uint64))
    assert a == b


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_old_and_new_names_are_one_option(server, model):
    both = {**extra_input("random_seed", 7, np.uint64), **extra_input("seed", 7, np.uint64)}
    assert sample(server, model, **both) == sample(server, model, **extra_input("seed", 7, np.uint64))
    inputs = text_inputs("안녕하세요", 4, **extra_input("min_length", 2, np.int32), **extra_input("min_tokens", 3, np.int32))
    res = grpc_stream(server.grpc_url, model, inputs, request_id=f"ks-{uuid.uuid4()}", timeout=60)
    assert res.error is not None and "'min_length' (2) and 'min_tokens' (3)" in res.error, res.error


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize(
    ("name", "value", "dtype", "fragment"),
    [
        ("lora_task_id", 3, np.uint64, "input 'lora_task_id' is not supported by koserve"),
        ("num_return_sequences", 2, np.int32, "input 'num_return_sequences' = 2 is not supported by koserve"),
        ("return_context_logits", True, np.bool_, "'return_context_logits' = True is not supported"),
        ("return_perf_metrics", True, np.bool_, "'return_perf_metrics' = True is not supported"),
    ],
)
def test_unsupported_nvidia_inputs_are_refused_by_name(server, model, name, value, dtype, fragment):
    inputs = text_inputs("안녕하세요", 4, **extra_input(name, value, dtype))
    res = grpc_stream(server.grpc_url, model, inputs, request_id=f"ks-{uuid.uuid4()}", timeout=60)
    assert res.error is not None and fragment in res.error, res.error


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("name", ["min_length", "min_tokens"])
def test_min_tokens_reaches_the_engine(server, model, name):
    """Given, preprocessing's OUT_MIN_TOKENS carries it to the engine's min_tokens (absent: not sent at all)."""
    assert sample(server, model, **extra_input(name, 3, np.int32))
