"""Request ids through the real server: the ensemble follows a stream by its id, so two concurrent requests with one
id are refused by name (the first comes out exact, the id is free again once it finished); a reused id starts a
fresh stream; distinct ids never mix."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from koserve.server.triton_calls import TEXT_MODELS, grpc_stream, http_generate_stream, text_inputs
from koserve.text import load_tokenizer


pytestmark = pytest.mark.server


PROMPT = "네 이름은 뭐야?"


def rid() -> str:
    return uuid.uuid4().hex


def replay_ids(endpoints, replay_text_file):
    tok = load_tokenizer(endpoints.tokenizer_dir)
    return tok, tok.encode(replay_text_file.read_text(encoding="utf-8"), add_special_tokens=False)


def full_text(endpoints, replay_text_file) -> str:
    tok, ids = replay_ids(endpoints, replay_text_file)
    text = tok.decode(ids)
    return text[: text.index("###")] if endpoints.profile == "komt-13b" else text


def strict(result) -> str:
    assert result.error is None, result.error
    for raw in result.raw:
        if isinstance(raw, bytes):
            raw.decode("utf-8")  # never partial UTF-8 on the wire
    assert "\ufffd" not in result.text
    return result.text


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_reused_request_id_starts_fresh(triton_replay, replay_text_file, model):
    """komt's replay text ends with the stop word: the first request's stream is 'stopped' — the second request
    with the same id must not inherit it (it used to answer empty)."""
    expected = full_text(triton_replay, replay_text_file)
    same = rid()
    for _ in range(3):
        res = grpc_stream(triton_replay.grpc_url, model, text_inputs(PROMPT, 300, stream=True), request_id=same)
        assert strict(res) == expected
    short = grpc_stream(triton_replay.grpc_url, model, text_inputs(PROMPT, 5, stream=True), request_id=same)
    tok, ids = replay_ids(triton_replay, replay_text_file)
    j = max(i for i in range(6) if not tok.decode(ids[:i]).endswith("\ufffd"))
    assert strict(short) == tok.decode(ids[:j])


# every ending the issue found: "<" (prefix of <|end|>, <s>), "##" (prefix of ###), "C#" (ends in a prefix of ###)
ENDINGS_TEXT = "부등호는 < 그리고 제목은 ## 마지막으로 제가 가장 좋아하는 언어는 C#"


@pytest.fixture(scope="module")
def endings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("endings") / "endings.txt"
    path.write_text(ENDINGS_TEXT, encoding="utf-8")
    return path


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
