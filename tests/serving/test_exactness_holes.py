"""Exactness holes found with inputs nobody here had picked (issue 17 §2), each against the real server.

- An answer ending in a prefix of a stop word (``C#``, ``##``, ``<``) comes out whole: ``postprocessing`` sees a
  stream's last response (:class:`koserve.triton_models.postprocess.StreamEnd`) and flushes what the stop-string matcher
  held back — streamed and not, gRPC and HTTP, ``ensemble`` and ``tensorrt_llm_bls``, both profiles, ended by the
  end of the text (an end id) or by ``max_tokens``.
- Two concurrent ``ensemble`` requests with one request id: the later one gets INVALID_ARG naming the id; the first
  comes out exact; the id is free again once the first finished.
- ``ensemble`` without ``text_input`` / ``max_tokens`` over gRPC ``stream_infer`` and HTTP ``generate_stream``:
  INVALID_ARG naming the missing input (Triton 2.51 let them through as one empty response).
- Token ids outside the vocabulary: refused by ``preprocessing`` (``end_id``, ``pad_id``) and by ``tensorrt_llm``
  (``input_ids``, ``end_id``) with the vocabulary size in the message.
- HTTP integers wrap to int32 in Triton's JSON parser (documented in docs/serving.md; this test pins the fact).
"""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from koserve.server.triton_calls import TEXT_MODELS, grpc_stream, http_generate, http_generate_stream, text_inputs
from koserve.text import load_tokenizer

pytestmark = pytest.mark.server

# every ending the issue found: "<" (prefix of <|end|>, <s>), "##" (prefix of ###), "C#" (ends in a prefix of ###)
ENDINGS_TEXT = "부등호는 < 그리고 제목은 ## 마지막으로 제가 가장 좋아하는 언어는 C#"
ENDINGS = ("<", "##", "C#")
PROFILES = ("komt-13b", "akallama-70b")
FAMILY = {"komt-13b": "llama2", "akallama-70b": "llama3"}


@pytest.fixture(scope="module")
def endings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("endings") / "endings.txt"
    path.write_text(ENDINGS_TEXT, encoding="utf-8")
    return path


def cut_after(tokenizer, text: str, ending: str) -> tuple[int, str]:
    """(max_tokens, expected answer) so that the answer is the replay text up to and including ``ending``'s first
    occurrence that a token boundary ends (the last ending: the whole text, ended by the text's end)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if ending == ENDINGS[-1]:
        return len(ids) + 20, tokenizer.decode(ids)
    for k in range(1, len(ids) + 1):
        prefix = tokenizer.decode(ids[:k])
        if prefix.endswith(ending):
            return k, prefix
    raise AssertionError(f"no token boundary after {ending!r}")


def answers(server, model: str, max_tokens: int) -> dict[str, tuple[str, str | None]]:
    """The answer of one prompt over each way of asking: {way: (text, error)}."""
    rid = lambda: f"ks-{uuid.uuid4()}"  # noqa: E731
    out = {}
    for stream in (True, False):
        res = grpc_stream(server.grpc_url, model, text_inputs("질문", max_tokens, stream=stream), request_id=rid(),
                          timeout=30)
        out[f"grpc stream={stream}"] = (res.text, res.error)
    res = grpc_stream(server.grpc_url, model, text_inputs("질문", max_tokens, stream=True), timeout=30)
    out["grpc stream=True, no id"] = (res.text, res.error)
    payload = {"text_input": "질문", "max_tokens": max_tokens, "stream": True}
    res = http_generate_stream(server.http_url, model, payload, request_id=rid(), timeout=30)
    out["http generate_stream"] = (res.text, res.error)
    status, body = http_generate(server.http_url, model, {**payload, "stream": False}, request_id=rid(), timeout=30)
    out["http generate"] = (body.get("text_output"), body.get("error") if status == 200 else f"HTTP {status} {body}")
    return out


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("ending", ENDINGS)
def test_answer_ending_in_a_stop_word_prefix_comes_out_whole(triton_servers, endings_file, profile, ending):
    server = triton_servers(profile, "replay", replay_text_file=endings_file)
    tokenizer = load_tokenizer(server.tokenizer_dir)
    max_tokens, expected = cut_after(tokenizer, ENDINGS_TEXT, ending)
    assert expected.endswith(ending)
    for model in TEXT_MODELS:
        for way, (text, error) in answers(server, model, max_tokens).items():
            assert error is None, (model, way, error)
            assert text == expected, (model, way, text)


@pytest.fixture(scope="module")
def paced(triton_servers, endings_file):
    """~50 ms per token: a request of the endings text takes > 1 s, so two requests overlap for certain."""
    return triton_servers("komt-13b", "replay", replay_text_file=endings_file, replay_delay_ms=50)


def _first_then_second(first, second):
    """Run ``first`` in a thread; once it is under way (0.5 s: several tokens out), run ``second`` here."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("first", first()), daemon=True)
    thread.start()
    time.sleep(0.5)
    result["second"] = second()
    thread.join(60)
    assert not thread.is_alive()
    return result["first"], result["second"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrent_requests_with_one_id_the_later_is_refused(paced, protocol):
    tokenizer = load_tokenizer(paced.tokenizer_dir)
    expected = tokenizer.decode(tokenizer.encode(ENDINGS_TEXT, add_special_tokens=False))
    rid = f"dup-{uuid.uuid4().hex[:8]}"

    def ask():
        if protocol == "grpc":
            return grpc_stream(paced.grpc_url, "ensemble", text_inputs("질문", 100), request_id=rid, timeout=60)
        payload = {"text_input": "질문", "max_tokens": 100, "stream": True}
        return http_generate_stream(paced.http_url, "ensemble", payload, request_id=rid, timeout=60)

    first, second = _first_then_second(ask, ask)
    assert first.error is None and first.text == expected
    assert second.error is not None and rid in second.error and "already in flight" in second.error, second.error
    if protocol == "http":
        assert "HTTP 400" in second.error  # INVALID_ARG
    again = ask()  # the first finished: the id is free
    assert again.error is None and again.text == expected


def test_a_stream_with_the_id_of_a_whole_answer_in_flight_is_refused(paced):
    """A non-streamed request with an id is in flight; a streamed one with the same id must not be mixed into it."""
    tokenizer = load_tokenizer(paced.tokenizer_dir)
    expected = tokenizer.decode(tokenizer.encode(ENDINGS_TEXT, add_special_tokens=False))
    rid = f"dup-{uuid.uuid4().hex[:8]}"

    def whole():
        return grpc_stream(paced.grpc_url, "ensemble", text_inputs("질문", 100, stream=False), request_id=rid,
                           timeout=60)

    def streamed():
        return grpc_stream(paced.grpc_url, "ensemble", text_inputs("질문", 100), request_id=rid, timeout=60)

    first, second = _first_then_second(whole, streamed)
    assert first.error is None and first.text == expected
    assert second.error is not None and rid in second.error and "already in flight" in second.error, second.error
    again = streamed()  # the whole answer came: the id is free
    assert again.error is None and again.text == expected


def test_concurrent_requests_with_distinct_ids_both_exact(paced):
    tokenizer = load_tokenizer(paced.tokenizer_dir)
    expected = tokenizer.decode(tokenizer.encode(ENDINGS_TEXT, add_special_tokens=False))

    def ask():
        return grpc_stream(paced.grpc_url, "ensemble", text_inputs("질문", 100), request_id=f"ks-{uuid.uuid4()}",
                           timeout=60)

    first, second = _first_then_second(ask, ask)
    assert (first.error, first.text) == (None, expected) and (second.error, second.text) == (None, expected)


@pytest.fixture(scope="module")
def server(triton_servers):
    return triton_servers("akallama-70b", "replay")


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
