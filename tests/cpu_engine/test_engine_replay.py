"""The replay engine: exact Korean text at a fixed pace, with the hf engine's end/stop/length rules."""

from __future__ import annotations

import time

import pytest

from koserve.errors import ConfigError
from koserve.fixtures import tokenizer_dir
from koserve.cpu_engine import EngineRequest, EngineSettings, FinishReason, create_engine
from koserve.cpu_engine.replay import BUILTIN_REPLAY_TEXT, ReplayEngine, load_replay_tokens, long_replay_text


def test_builtin_text_has_what_korean_streams_need():
    assert "🌸" in BUILTIN_REPLAY_TEXT and "한국어" in BUILTIN_REPLAY_TEXT
    assert "," in BUILTIN_REPLAY_TEXT and "?" in BUILTIN_REPLAY_TEXT and " " in BUILTIN_REPLAY_TEXT


@pytest.mark.parametrize("family", ["llama3", "llama2"])
@pytest.mark.parametrize("tokens", [1, 99, 100, 101, 400, 4096])
def test_long_replay_text_has_the_tokens_a_benchmark_asks_for(tmp_path, family, tokens):
    path = tmp_path / "replay.txt"
    path.write_text(long_replay_text(tokens), encoding="utf-8")
    assert len(load_replay_tokens(tokenizer_dir(family), path)) >= tokens


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_replays_the_exact_text(family):
    from tokenizers import Tokenizer

    tokens = load_replay_tokens(tokenizer_dir(family))
    engine = ReplayEngine(tokens)
    try:
        handle = engine.submit(EngineRequest(input_ids=(1,), max_new_tokens=1000, streaming=True))
        chunks = list(handle.outputs(10))
    finally:
        engine.shutdown()
    ids = [t for c in chunks for t in c.token_ids]
    assert ids == tokens
    tok = Tokenizer.from_file(str(tokenizer_dir(family) / "tokenizer.json"))
    assert tok.decode(ids) == BUILTIN_REPLAY_TEXT
    # as TensorRT-LLM: the end of the text (an end id) is seen one step later, so the last token comes in a chunk of
    # its own and the final chunk carries none (postprocessing tells a stream's end by it)
    assert chunks[-1].finished and chunks[-1].token_ids == [] and chunks[-1].finish_reason is FinishReason.END_ID
    assert not chunks[-2].finished and len(chunks) == len(tokens) + 1


def test_text_file_and_settings(tmp_path):
    text = tmp_path / "answer.txt"
    text.write_text("서울은 한국의 수도입니다. 🇰🇷", encoding="utf-8")
    settings = EngineSettings.from_parameters(
        {"mode": "replay", "tokenizer_dir": str(tokenizer_dir("llama3")), "replay_text_file": str(text),
         "replay_delay_ms": "0"}
    )
    engine = create_engine(settings)
    try:
        out = engine.submit(EngineRequest(input_ids=(5, 6), max_new_tokens=100)).result(10)
    finally:
        engine.shutdown()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir("llama3") / "tokenizer.json"))
    assert tok.decode(out.token_ids) == "서울은 한국의 수도입니다. 🇰🇷"
    with pytest.raises(ConfigError, match="cannot read replay text file"):
        load_replay_tokens(tokenizer_dir("llama3"), tmp_path / "missing.txt")


TOKENS = list(range(100, 120))


@pytest.fixture
def engine():
    eng = ReplayEngine(TOKENS, delay_ms=0)
    yield eng
    eng.shutdown()


def chunks_of(engine, **kw):
    handle = engine.submit(EngineRequest(input_ids=(1, 2), streaming=True, **kw))
    return list(handle.outputs(10))


def test_length_end_id_and_stop_words(engine):
    c = chunks_of(engine, max_new_tokens=5)
    assert [t for x in c for t in x.token_ids] == TOKENS[:5]
    assert c[-1].finished and c[-1].token_ids == [104] and c[-1].finish_reason is FinishReason.LENGTH

    c = chunks_of(engine, max_new_tokens=50, end_ids=(999, 107))
    assert [t for x in c for t in x.token_ids] == TOKENS[:7]  # the end id is not emitted
    # TensorRT-LLM: the end id step sends a final response without tokens
    assert c[-2].token_ids == [106] and c[-1].token_ids == [] and c[-1].finish_reason is FinishReason.END_ID

    c = chunks_of(engine, max_new_tokens=50, stop_words=((103, 104),))
    assert [t for x in c for t in x.token_ids] == TOKENS[:5]  # the stop word is emitted, then it stops
    assert c[-1].finish_reason is FinishReason.STOP_WORDS

    out = engine.submit(EngineRequest(input_ids=(1,), max_new_tokens=50, end_ids=(100,))).result(10)
    assert out.token_ids == [] and out.finish_reason is FinishReason.END_ID


def test_repeat_at_end():
    eng = ReplayEngine(TOKENS, at_end="repeat")
    try:
        out = eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=45)).result(10)
    finally:
        eng.shutdown()
    assert out.token_ids == (TOKENS * 3)[:45] and out.finish_reason is FinishReason.LENGTH


def test_pace_and_concurrency():
    eng = ReplayEngine(TOKENS, delay_ms=20, max_batch_size=8)
    try:
        stamps: list[list[float]] = [[] for _ in range(8)]
        start = time.monotonic()
        handles = [
            eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=10, streaming=True),
                       on_output=lambda out, k=k: stamps[k].append(time.monotonic() - start))
            for k in range(8)
        ]
        assert all(h.done.wait(10) for h in handles)
        elapsed = time.monotonic() - start
    finally:
        eng.shutdown()
    assert all(len(s) == 10 for s in stamps)
    assert stamps[0][0] >= 0.019  # the first token comes one delay after admission
    assert elapsed >= 0.19  # 10 tokens x 20 ms
    assert elapsed < 1.2  # the 8 streams ran side by side, not one after another (8 x 0.2 s)
    gaps = [b - a for s in stamps for a, b in zip(s, s[1:])]
    assert sorted(gaps)[len(gaps) // 2] == pytest.approx(0.02, abs=0.008)


def test_cancel_while_waiting_and_running():
    eng = ReplayEngine(TOKENS, delay_ms=5, max_batch_size=1, at_end="repeat")
    try:
        running = eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=10_000, streaming=True))
        waiting = eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=3))
        next(running.outputs(5))
        waiting.cancel()
        assert waiting.result(5).finish_reason is FinishReason.CANCELLED
        running.cancel()
        last = list(running.outputs(5))[-1]
        assert last.finish_reason is FinishReason.CANCELLED
        assert eng.num_active == 0 and eng.num_waiting == 0
    finally:
        eng.shutdown()


def test_shutdown_finishes_everything():
    eng = ReplayEngine(TOKENS, delay_ms=50, at_end="repeat")
    handle = eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=1000, streaming=True))
    eng.shutdown()
    assert list(handle.outputs(5))[-1].finish_reason is FinishReason.CANCELLED


def test_failing_receiver_gets_a_final_chunk_and_engine_keeps_serving():
    eng = ReplayEngine(TOKENS, at_end="repeat")
    seen = []

    def flaky(out):
        seen.append(out)
        if len(seen) == 2:
            raise RuntimeError("client gone")

    try:
        handle = eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=500, streaming=True), on_output=flaky)
        assert handle.done.wait(5)
        assert len(seen) == 3 and seen[-1].finished and seen[-1].finish_reason is FinishReason.CANCELLED
        assert "client gone" in seen[-1].error
        assert eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=3)).result(5).token_ids == TOKENS[:3]
    finally:
        eng.shutdown()
