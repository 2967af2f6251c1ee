"""End to end on a real tritonserver: ensemble and BLS, gRPC streaming and HTTP generate/generate_stream, both
profiles; exact Korean streaming; stop words, end ids, max_tokens, exclude_input_in_output; cancellation;
concurrency. Servers come from the session fixtures in tests/conftest.py."""

from __future__ import annotations

import concurrent.futures as cf
import time
import uuid

import numpy as np
import pytest

from koserve.server.triton_calls import (
    TEXT_MODELS,
    grpc_stream,
    http_generate,
    http_generate_stream,
    text_inputs,
)
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


# --- exact Korean streaming ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_grpc_streamed_korean_is_exact(triton_replay, replay_text_file, model):
    expected = expected_replay_text(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    streamed = grpc_stream(triton_replay.grpc_url, model, text_inputs(PROMPT, 300, stream=True), request_id=rid())
    assert_clean_pieces(streamed)
    # the BLS may let tokens share responses when the server is busy (test_bls_responses_* cover both extremes)
    assert len(streamed.pieces) > (10 if model == "ensemble" else 1), "the answer must arrive in pieces"
    whole = grpc_stream(triton_replay.grpc_url, model, text_inputs(PROMPT, 300, stream=False), request_id=rid())
    assert_clean_pieces(whole)
    assert len(whole.pieces) == 1
    assert streamed.text == whole.text == expected


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_http_generate_stream_korean_is_exact(triton_replay, replay_text_file, model):
    expected = expected_replay_text(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    streamed = http_generate_stream(
        triton_replay.http_url, model, {"text_input": PROMPT, "max_tokens": 300, "stream": True}, request_id=rid()
    )
    assert_clean_pieces(streamed)  # every SSE event parsed as strict JSON
    assert len(streamed.pieces) > (10 if model == "ensemble" else 1)
    status, body = http_generate(
        triton_replay.http_url, model, {"text_input": PROMPT, "max_tokens": 300}, request_id=rid()
    )
    assert status == 200 and "error" not in body, body
    assert streamed.text == body["text_output"] == expected


def test_bls_is_exact_without_request_id(triton_replay, replay_text_file):
    expected = expected_replay_text(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    streamed = grpc_stream(triton_replay.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, 300, stream=True))
    assert_clean_pieces(streamed)
    assert streamed.text == expected


@pytest.mark.parametrize(("profile", "share"), [("komt-13b", 0.0), ("akallama-70b", 0.0), ("komt-13b", 1e-9)],
                         ids=["komt-one-per-token", "akallama-one-per-token", "komt-shared"])
def test_bls_responses_are_exact_one_token_each_or_several(triton_servers, replay_text_file, profile, share):
    """The two extremes of the BLS's response policy: send share 0 (one response per engine response, every split
    point of the text on the wire) and ~0 (a stream's tokens always share responses, 40 ms apart). The text is exact
    over gRPC and HTTP and the token counts (num_output_tokens, 1 when absent) add up. (No limit in engine gaps: with
    it, a 2 ms engine would get a response every 6 ms.)"""
    server = triton_servers(profile, "replay", replay_text_file=replay_text_file, replay_delay_ms=2,
                            bls_stream_send_share=share, bls_stream_max_interval_us=40_000,
                            bls_stream_max_wait_gaps=0)
    text = replay_text_file.read_text(encoding="utf-8")
    want = expected_replay_text(server, text)
    tok, ids = replay_ids(server, text)
    n = next(k for k in range(60, len(ids)) if not tok.decode(ids[:k]).endswith("\ufffd"))  # a whole character
    prefix = tok.decode(ids[:n])
    assert want.startswith(prefix) and len(prefix) < len(want)
    streamed = grpc_stream(server.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, n), request_id=rid())
    sse = http_generate_stream(server.http_url, "tensorrt_llm_bls",
                               {"text_input": PROMPT, "max_tokens": n, "stream": True}, request_id=rid())
    for result in (streamed, sse):
        assert_clean_pieces(result)
        assert result.text == prefix and result.token_count == n
        if share:
            assert max(result.tokens) > 3 and len(result.pieces) < n / 2, result.tokens
        else:
            assert len(result.pieces) == n and set(result.tokens) == {1}
    whole = grpc_stream(server.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, 400), request_id=rid())
    assert whole.text == want  # komt: ended by the profile's stop word ###, which is never sent


def test_concurrent_streams_are_each_exact(triton_replay, replay_text_file):
    expected = expected_replay_text(triton_replay, replay_text_file.read_text(encoding="utf-8"))
    jobs = [(m, i) for m in TEXT_MODELS for i in range(6)]
    with cf.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [
            pool.submit(grpc_stream, triton_replay.grpc_url, m, text_inputs(PROMPT, 300), request_id=rid(), timeout=60)
            for m, _ in jobs
        ]
        results = [f.result(timeout=90) for f in futures]
    for (model, _), res in zip(jobs, results):
        assert_clean_pieces(res)
        assert res.text == expected, model


# --- generation controls ---------------------------------------------------------------------------------------
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


# --- hf mode (tiny random-weight checkpoints: meaningless text, real tokenizers) -------------------------------------
@pytest.mark.parametrize("model", TEXT_MODELS)
def test_hf_stream_equals_non_stream(triton_hf, model):
    params = dict(top_k=1, random_seed=7)
    streamed = grpc_stream(triton_hf.grpc_url, model, text_inputs(PROMPT, 24, stream=True, **params),
                           request_id=rid(), timeout=120)
    whole = grpc_stream(triton_hf.grpc_url, model, text_inputs(PROMPT, 24, stream=False, **params),
                        request_id=rid(), timeout=120)
    assert streamed.error is None and whole.error is None, (streamed.error, whole.error)
    for raw in streamed.raw:
        raw.decode("utf-8")
    assert streamed.text == whole.text
    assert whole.text  # random weights still produce tokens


def test_hf_http_generate_stream(triton_hf):
    res = http_generate_stream(triton_hf.http_url, "tensorrt_llm_bls",
                               {"text_input": PROMPT, "max_tokens": 12, "stream": True, "top_k": 1},
                               request_id=rid(), timeout=120)
    assert res.error is None and res.text


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


# --- cancellation -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_server(triton_servers):
    """Replay at 30 ms/token with ONE engine slot: a request the engine did not stop blocks the next one."""
    return triton_servers("akallama-70b", "replay", replay_delay_ms=30, max_batch_size=1)


def _engine_inputs(tokens: int) -> dict:
    return {
        "input_ids": np.array([[128000, 9906]], dtype=np.int32),
        "input_lengths": np.array([[2]], dtype=np.int32),
        "request_output_len": np.array([[tokens]], dtype=np.int32),
        "streaming": np.array([[True]], dtype=np.bool_),
    }


def _assert_engine_free(server):
    # 150 tokens x 30 ms = 4.5 s if the engine kept going; a stopped engine takes the next request at once
    t0 = time.perf_counter()
    nxt = grpc_stream(server.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, 2), request_id=rid(), timeout=30)
    assert nxt.error is None and nxt.text
    assert time.perf_counter() - t0 < 2.0, "the cancelled request kept the engine busy"


def test_cancelled_engine_stream_stops_the_engine(slow_server):
    first = grpc_stream(slow_server.grpc_url, "tensorrt_llm", _engine_inputs(150), request_id=rid(),
                        output="output_ids", cancel_after=3)
    assert first.error is None and len(first.pieces) >= 1
    _assert_engine_free(slow_server)


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_client_cancel_with_stop_request_stops_the_engine(slow_server, model):
    """What the koserve client does on cancel: close the stream and send tensorrt_llm a TensorRT-LLM `stop` for its
    request id — through the ensemble and through the BLS (which gives the engine request the client's id)."""
    request_id = rid()
    first = grpc_stream(slow_server.grpc_url, model, text_inputs(PROMPT, 150), request_id=request_id, cancel_after=3)
    assert first.error is None and len(first.pieces) >= 1
    stop = {**_engine_inputs(1), "stop": np.array([[True]], dtype=np.bool_)}
    stopped = grpc_stream(slow_server.grpc_url, "tensorrt_llm", stop, request_id=request_id, output="output_ids")
    assert stopped.error is None
    _assert_engine_free(slow_server)


def test_bls_cancel_polling_stops_the_engine(triton_servers, monkeypatch):
    """The BLS notices a client that went away by itself (cancel_poll_s, default 0.25 s; 0.1 here)."""
    monkeypatch.setenv("KOSERVE_BLS_CANCEL_POLL_S", "0.1")  # read by the BLS stub of the server started here
    server = triton_servers("akallama-70b", "replay", replay_delay_ms=29, max_batch_size=1)
    first = grpc_stream(server.grpc_url, "tensorrt_llm_bls", text_inputs(PROMPT, 150), request_id=rid(),
                        cancel_after=3)
    assert first.error is None and len(first.pieces) >= 1
    _assert_engine_free(server)
