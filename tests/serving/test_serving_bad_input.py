"""Bad input → a clear error naming what was wrong and the limit, and the server keeps serving (issue §6).

Each case goes to both ``ensemble`` and ``tensorrt_llm_bls`` over gRPC streaming, then a good request must still
succeed. The server (replay mode, akallama-70b) is rendered with max_input_len 384 and max_seq_len 512."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from koserve.server.triton_calls import TEXT_MODELS, grpc_stream, http_generate, text_inputs

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def server(triton_servers):
    return triton_servers("akallama-70b", "replay")


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
