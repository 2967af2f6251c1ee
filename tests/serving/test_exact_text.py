"""Exact text through the real server: ensemble and BLS, gRPC streaming and HTTP generate/generate_stream, both
profiles. Streamed pieces concatenate to exactly the whole answer (Korean, emoji, byte-fallback syllables), never
U+FFFD or partial UTF-8; one streamed response per engine response, even with empty text; a length stop inside a
character drops it; an answer ending in a prefix of a stop word (``C#``, ``##``, ``<``) comes out whole; the ensemble
without a request id never drops characters."""

from __future__ import annotations

import concurrent.futures as cf
import uuid

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


def replay_file_ids(endpoints, replay_text_file):
    return replay_ids(endpoints, replay_text_file.read_text(encoding="utf-8"))


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


def full_text(endpoints, replay_text_file) -> str:
    tok, ids = replay_file_ids(endpoints, replay_text_file)
    text = tok.decode(ids)
    return text[: text.index("###")] if endpoints.profile == "komt-13b" else text


def strict(result) -> str:
    assert result.error is None, result.error
    for raw in result.raw:
        if isinstance(raw, bytes):
            raw.decode("utf-8")  # never partial UTF-8 on the wire
    assert "\ufffd" not in result.text
    return result.text


# --- exact Korean streaming ------------------------------------------------------------------------------------
@pytest.fixture
def triton_replay(triton_replay_engines):
    """This module's replay tests run on both engine renderings (C++ backend interface, LLM API step)."""
    return triton_replay_engines


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


@pytest.mark.parametrize("model", TEXT_MODELS)
def test_streamed_responses_count_every_token(triton_replay, replay_text_file, model):
    """Byte-fallback pieces (komt) and multi-token characters give empty text deltas: still counted, so a client
    sees max_tokens tokens (finish_reason "length", not "stop"). The ensemble sends one response per engine
    response; the BLS may cover several tokens in one response and then says how many (num_output_tokens)."""
    tok, ids = replay_file_ids(triton_replay, replay_text_file)
    n = 40
    prefix = tok.decode(ids[:n])
    assert not prefix.endswith("\ufffd") and "###" not in prefix
    res = grpc_stream(triton_replay.grpc_url, model, text_inputs(PROMPT, n, stream=True), request_id=rid())
    assert strict(res) == prefix
    assert res.token_count == n, list(zip(res.pieces, res.tokens))
    if model == "ensemble":
        assert len(res.pieces) == n and set(res.tokens) == {1}
    assert "" in res.pieces or triton_replay.profile == "akallama-70b" or model != "ensemble"  # komt byte pieces


def _cut_inside_a_character(tok, ids) -> int:
    """The first length that ends inside a character. The fixture's replay text (tests/conftest.py REPLAY_TEXT: an
    emoji for Llama-3, byte-fallback syllables for Llama-2) must have one for both tokenizers, or this test would
    test nothing."""
    for k in range(2, len(ids)):
        if tok.decode(ids[:k]).endswith("\ufffd"):
            return k
    raise AssertionError("the replay text has no character split across tokens for this tokenizer: fix the fixture")


@pytest.mark.parametrize("stream", [True, False])
def test_length_stop_inside_a_character_drops_it(triton_replay, replay_text_file, stream):
    tok, ids = replay_file_ids(triton_replay, replay_text_file)
    k = _cut_inside_a_character(tok, ids)
    # the text of the tokens that end inside the incomplete character is dropped (Llama-3: " \xf0\x9f" = a space
    # plus the first bytes of 🤗): what is left is the longest prefix of whole tokens that decodes cleanly
    j = max(i for i in range(k) if not tok.decode(ids[:i]).endswith("\ufffd"))
    expected = tok.decode(ids[:j])
    texts = {}
    for model in TEXT_MODELS:
        res = grpc_stream(triton_replay.grpc_url, model, text_inputs(PROMPT, k, stream=stream), request_id=rid())
        texts[model] = strict(res)
        sse = http_generate_stream(
            triton_replay.http_url, model, {"text_input": PROMPT, "max_tokens": k, "stream": stream},
            request_id=rid(),
        )
        texts[model + "/http"] = strict(sse)
    assert set(texts.values()) == {expected}, texts


def test_ensemble_without_request_id_is_exact(triton_replay, replay_text_file):
    """No id: postprocessing cannot follow the stream, so the engine answers in one response — exact text
    ("안녕하세요" used to lose 녕 over HTTP generate_stream), delivered as one piece."""
    expected = full_text(triton_replay, replay_text_file)
    res = http_generate_stream(triton_replay.http_url, "ensemble", {"text_input": PROMPT, "max_tokens": 300,
                                                                    "stream": True})
    assert strict(res) == expected
    assert len(res.pieces) == 1
    res = grpc_stream(triton_replay.grpc_url, "ensemble", text_inputs(PROMPT, 300, stream=True))
    assert strict(res) == expected and len(res.pieces) == 1
    with_id = grpc_stream(triton_replay.grpc_url, "ensemble", text_inputs(PROMPT, 300, stream=True),
                          request_id=rid())
    assert strict(with_id) == expected and len(with_id.pieces) > 10  # with an id it streams


# -- answers ending in a prefix of a stop word ------------------------------------------------------------------


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
def test_answer_ending_in_a_stop_word_prefix_comes_out_whole(triton_servers, endings_file, profile, ending,
                                                            engine_backend):
    server = triton_servers(profile, "replay", replay_text_file=endings_file, engine_backend=engine_backend)
    tokenizer = load_tokenizer(server.tokenizer_dir)
    max_tokens, expected = cut_after(tokenizer, ENDINGS_TEXT, ending)
    assert expected.endswith(ending)
    for model in TEXT_MODELS:
        for way, (text, error) in answers(server, model, max_tokens).items():
            assert error is None, (model, way, error)
            assert text == expected, (model, way, text)
