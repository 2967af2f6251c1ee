"""Bad input gets a clear error naming what was wrong and the limit, and the server keeps serving: every case to both
``ensemble`` and ``tensorrt_llm_bls`` (gRPC streaming; HTTP ``generate`` answers INVALID_ARG as 400), a missing
required input, token ids outside the vocabulary (refused by preprocessing, the BLS and the engine), and Triton's
HTTP JSON integers wrapping to int32. The server (replay mode, akallama-70b) is rendered with max_input_len 384 and
max_seq_len 512."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from koserve.server.triton_calls import TEXT_MODELS, grpc_stream, http_generate, http_generate_stream, text_inputs
from koserve.text import load_tokenizer


pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(triton_servers, engine_backend):
    return triton_servers("akallama-70b", "replay", engine_backend=engine_backend)


def call(server, model, inputs):
    return grpc_stream(server.grpc_url, model, inputs, request_id=uuid.uuid4().hex, timeout=30)


def assert_error_then_serving(server, model, inputs, *fragments):
    res = call(server, model, inputs)
    assert res.error is not None, f"expected an error, got text {res.text!r}"
    for fragment in fragments:
        assert fragment in res.error, res.error
    ok = call(server, model, text_inputs("안녕?", 4))
    assert ok.error is None and ok.text, "the server must keep serving after a bad request"


@pytest.mark.parametrize("model", TEXT_MODELS)
class TestBadInput:
    def test_empty_text(self, server, model):
        assert_error_then_serving(server, model, text_inputs("", 8), "text_input is empty")

    def test_whitespace_text(self, server, model):
        assert_error_then_serving(server, model, text_inputs("  \n ", 8), "text_input is empty")

    def test_prompt_longer_than_max_input(self, server, model):
        res_inputs = text_inputs("가나다라 " * 300, 8)
        assert_error_then_serving(server, model, res_inputs, "max input length is 384", "1202 tokens long")

    def test_max_tokens_zero(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 0), "max_tokens must be >= 1, got 0")

    def test_max_tokens_negative(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", -5), "max_tokens must be >= 1, got -5")

    def test_max_tokens_beyond_max_seq_len(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 600), "max_tokens (600)", "512")

    def test_negative_temperature(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 8, temperature=-0.5), "temperature must be >= 0")

    @pytest.mark.parametrize("top_p", [0.0, 1.5, -0.1])
    def test_top_p_out_of_range(self, server, model, top_p):
        assert_error_then_serving(server, model, text_inputs("안녕", 8, top_p=top_p), "top_p must be in (0, 1]")

    def test_negative_top_k(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 8, top_k=-1), "top_k must be >= 0, got -1")

    def test_invalid_utf8(self, server, model):
        inputs = text_inputs("x", 8)
        inputs["text_input"] = np.array([[b"\xea\xb0 broken \xff"]], dtype=np.object_)
        assert_error_then_serving(server, model, inputs, "not valid UTF-8")

    def test_wrong_dtype(self, server, model):
        inputs = text_inputs("안녕", 8)
        inputs["max_tokens"] = np.array([[8.0]], dtype=np.float32)
        assert_error_then_serving(server, model, inputs, "max_tokens", "INT32")

    def test_wrong_shape_two_prompts(self, server, model):
        inputs = text_inputs("안녕", 8)
        inputs["text_input"] = np.array([["하나".encode(), "둘".encode()]], dtype=np.object_)
        # dims [1] as NVIDIA's config: Triton itself refuses the shape, naming the input
        assert_error_then_serving(server, model, inputs, "text_input", "Expected [-1,1], got [1,2]")

    def test_batch_of_two(self, server, model):
        inputs = {
            "text_input": np.array([["하나".encode()], ["둘".encode()]], dtype=np.object_),
            "max_tokens": np.array([[4], [4]], dtype=np.int32),
        }
        assert_error_then_serving(server, model, inputs, "batch size 2")

    def test_whitespace_stop_word(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 8, stop_words=["  "]), "stop_words[0]",
                                  "whitespace")

    def test_overlong_stop_word(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 8, stop_words=["끝" * 300]), "stop_words[0]",
                                  "limit is 256")

    def test_invalid_utf8_stop_word(self, server, model):
        inputs = text_inputs("안녕", 8)
        inputs["stop_words"] = np.array([[b"\xff\xfe"]], dtype=np.object_)
        assert_error_then_serving(server, model, inputs, "stop_words[0]", "not valid UTF-8")

    def test_end_id_outside_vocabulary(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 8, end_id=999_999), "end_id 999999",
                                  "vocabulary")

    def test_beam_width_above_one(self, server, model):
        assert_error_then_serving(server, model, text_inputs("안녕", 8, beam_width=4), "beam_width must be 1")


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_http_generate_of_a_streamed_request_answers_200_with_error(server, model):
    """Triton answers HTTP 200 with an error body when /generate gets several responses: clients must check it."""
    status, body = http_generate(server.http_url, model, {"text_input": "안녕", "max_tokens": 8, "stream": True},
                                 request_id=uuid.uuid4().hex)
    assert status == 200
    assert "error" in body and "generate_stream" in body["error"].replace(" stream", "_stream")
    ok = call(server, model, text_inputs("안녕?", 4))
    assert ok.error is None and ok.text


def test_http_infer_on_decoupled_model_is_refused(server):
    import httpx

    payload = {"inputs": [{"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["안녕"]},
                          {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [4]}]}
    resp = httpx.post(f"{server.http_url}/v2/models/ensemble/infer", json=payload, timeout=30)
    assert resp.status_code >= 400 and "decoupled" in resp.text.lower()


def rid() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize(
    ("payload", "fragments"),
    [
        ({"text_input": "안녕", "max_tokens": 0}, ["max_tokens must be >= 1", "got 0"]),
        ({"text_input": "안녕", "max_tokens": 600}, ["max sequence length 512"]),
        ({"text_input": "안녕 " * 400, "max_tokens": 8}, ["max input length is 384"]),
        ({"text_input": "안녕", "max_tokens": 8, "top_p": 1.5}, ["top_p must be in (0, 1]"]),
    ],
)
def test_bad_input_is_invalid_arg(server, model, payload, fragments):
    """INVALID_ARG → HTTP 400 on generate (the gateway maps it without guessing); the message names the limit.
    Over gRPC stream_infer Triton carries only the message (no status code per streamed response)."""
    resp = httpx.post(f"{server.http_url}/v2/models/{model}/generate", json=payload, timeout=30)
    assert resp.status_code == 400, (resp.status_code, resp.text)
    message = resp.json()["error"]
    for fragment in fragments:
        assert fragment in message, message
    res = grpc_stream(server.grpc_url, model, text_inputs(payload["text_input"], payload["max_tokens"],
                                                           top_p=payload.get("top_p")), request_id=rid())
    assert res.error is not None and all(f in res.error for f in fragments), res.error
    status, body = http_generate(server.http_url, model, {"text_input": "안녕", "max_tokens": 4}, request_id=rid())
    assert status == 200 and body.get("text_output"), body


@pytest.mark.parametrize("missing", ["text_input", "max_tokens"])
def test_ensemble_without_a_required_input_names_it(server, missing):
    inputs = text_inputs("안녕?", 4)
    del inputs[missing]
    res = grpc_stream(server.grpc_url, "ensemble", inputs, request_id=f"ks-{uuid.uuid4()}", timeout=30)
    assert res.error is not None and f"'{missing}' is required" in res.error, (res.text, res.error)
    payload = {"text_input": "안녕?", "max_tokens": 4, "stream": True}
    del payload[missing]
    res = http_generate_stream(server.http_url, "ensemble", payload, request_id=f"ks-{uuid.uuid4()}", timeout=30)
    assert res.error is not None and "HTTP 400" in res.error and f"'{missing}' is required" in res.error, res.error
    ok = grpc_stream(server.grpc_url, "ensemble", text_inputs("안녕?", 4), request_id=f"ks-{uuid.uuid4()}")
    assert ok.error is None and ok.text


@pytest.mark.parametrize("model", TEXT_MODELS)
@pytest.mark.parametrize("name", ["end_id", "pad_id"])
@pytest.mark.parametrize("value", [10**9, -1])
def test_text_models_refuse_ids_outside_the_vocabulary(server, model, name, value):
    res = grpc_stream(server.grpc_url, model, text_inputs("안녕?", 4, **{name: value}),
                      request_id=f"ks-{uuid.uuid4()}", timeout=30)
    assert res.error is not None and f"{name} {value}" in res.error and "128256" in res.error, res.error


def _engine_inputs(ids, **extra):
    inputs = {
        "input_ids": np.array([ids], dtype=np.int32),
        "input_lengths": np.array([[len(ids)]], dtype=np.int32),
        "request_output_len": np.array([[4]], dtype=np.int32),
        "streaming": np.array([[True]], dtype=np.bool_),
    }
    inputs.update({k: np.array([[v]], dtype=np.int32) for k, v in extra.items()})
    return inputs


@pytest.mark.parametrize(
    ("ids", "extra", "fragment"),
    [
        ([9906, 10**9], {}, "input_ids hold 1 token id(s) outside the vocabulary [0, 128256)"),
        ([-1, 9906], {}, "input_ids hold 1 token id(s) outside the vocabulary [0, 128256)"),
        ([9906, 1917], {"end_id": 10**9}, "end_id 1000000000 is outside [-1, 128256)"),
    ],
)
def test_engine_refuses_ids_outside_the_vocabulary(server, ids, extra, fragment):
    res = grpc_stream(server.grpc_url, "tensorrt_llm", _engine_inputs(ids, **extra), output="output_ids",
                      request_id=f"ks-{uuid.uuid4()}", timeout=30)
    assert res.error is not None and fragment in res.error, res.error
    ok = grpc_stream(server.grpc_url, "tensorrt_llm", _engine_inputs([9906, 1917]), output="output_ids",
                     request_id=f"ks-{uuid.uuid4()}", timeout=30)
    assert ok.error is None


def test_http_json_integers_wrap_to_int32(server):
    """Triton 2.51's HTTP JSON parser wraps integers to int32 before koserve sees them (docs/serving.md): 2**32 + 4
    runs as 4 tokens, 2**40 arrives as 0. koserve's client and gateway refuse such values before sending."""
    status, body = http_generate(server.http_url, "ensemble", {"text_input": "안녕?", "max_tokens": 2**32 + 4})
    assert status == 200 and "error" not in body
    tokenizer = load_tokenizer(server.tokenizer_dir)
    assert len(tokenizer.encode(body["text_output"], add_special_tokens=False)) <= 4
    status, body = http_generate(server.http_url, "ensemble", {"text_input": "안녕?", "max_tokens": 2**40})
    assert "max_tokens must be >= 1, got 0" in str(body)
