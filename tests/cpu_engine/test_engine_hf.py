"""The hf engine on the tiny random Llama-3 checkpoint: decoding rules, sampling, concurrency, cancellation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from koserve.cpu_engine import EngineBusyError, EngineOutput, EngineRequest, FinishReason
from koserve.cpu_engine.hf import HFEngine


def run(engine, **kw) -> EngineOutput:
    return engine.submit(EngineRequest(**kw)).result(timeout=60)


@pytest.fixture(scope="module")
def greedy(hf_engine, prompt_ids):
    """The greedy continuation of the prompt (reference for end id / stop word / bad word tests)."""
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=12)
    assert out.finish_reason is FinishReason.LENGTH and len(out.token_ids) == 12
    return out.token_ids


def first_new(tokens, start):
    """An index >= start whose token does not occur earlier (so it is the first time the engine produces it). The
    fixture (the tiny checkpoint's greedy continuation, deterministic) must have one, or the test would test
    nothing."""
    for i in range(start, len(tokens)):
        if tokens[i] not in tokens[:i]:
            return i
    raise AssertionError(f"the fixture's greedy continuation {tokens} has no new token from index {start}: "
                         "fix the fixture (tiny checkpoint or prompt)")


def test_greedy_matches_transformers_generate(hf_engine, tiny_llama3, prompt_ids, greedy):
    # the KV-cache decoding loop gives exactly what transformers' own greedy generate gives
    model = hf_engine.model
    with torch.inference_mode():
        ref = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
            pad_token_id=0, min_new_tokens=12,
        )[0, len(prompt_ids):].tolist()
    assert greedy == ref


def test_temperature_zero_and_top_k_one_are_greedy(hf_engine, prompt_ids, greedy):
    assert run(hf_engine, input_ids=prompt_ids, max_new_tokens=12, temperature=0.0, top_k=50).token_ids == greedy
    assert run(hf_engine, input_ids=prompt_ids, max_new_tokens=12, top_k=1, top_p=0.5,
               seed=9).token_ids == greedy


def test_seeded_sampling_is_reproducible(hf_engine, prompt_ids):
    kw = dict(input_ids=prompt_ids, max_new_tokens=16, temperature=1.0, top_k=100, top_p=0.95)
    a = run(hf_engine, seed=1234, **kw).token_ids
    b = run(hf_engine, seed=1234, **kw).token_ids
    c = run(hf_engine, seed=1235, **kw).token_ids
    assert a == b
    assert a != c
    # the same seed gives the same tokens while other requests run at the same time
    handles = [hf_engine.submit(EngineRequest(seed=s, **kw)) for s in (1234, 7, 8, 1234)]
    results = [h.result(60).token_ids for h in handles]
    assert results[0] == results[3] == a


def test_top_k_limits_the_candidates(hf_engine, prompt_ids):
    with torch.inference_mode():
        logits = hf_engine.model(torch.tensor([prompt_ids])).logits[0, -1]
    top3 = set(torch.topk(logits, 3).indices.tolist())
    firsts = {run(hf_engine, input_ids=prompt_ids, max_new_tokens=1, temperature=5.0, top_k=3,
                  seed=s).token_ids[0] for s in range(12)}
    assert firsts <= top3 and len(firsts) > 1


def test_end_ids_stop_and_are_not_emitted(hf_engine, prompt_ids, greedy):
    i = first_new(greedy, 2)
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=12, end_ids=(999_999 % 128256, greedy[i]))
    assert out.token_ids == greedy[:i]
    assert out.finish_reason is FinishReason.END_ID


def test_min_length_bans_end_ids(hf_engine, prompt_ids, greedy):
    i = first_new(greedy, 1)
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=i + 3, end_ids=(greedy[i],), min_tokens=i + 1)
    assert out.token_ids[:i] == greedy[:i]
    assert out.token_ids[i] != greedy[i]
    assert len(out.token_ids) >= i + 1


def test_stop_words_are_emitted_then_stop(hf_engine, prompt_ids, greedy):
    i = first_new(greedy, 3)
    word = (greedy[i - 1], greedy[i])
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=12, stop_words=((5, 6, 7), word))
    assert out.token_ids == greedy[: i + 1]  # the stop word's tokens are part of the output, as in TensorRT-LLM
    assert out.finish_reason is FinishReason.STOP_WORDS


def test_bad_words_are_never_generated(hf_engine, prompt_ids, greedy):
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=4, bad_words=((greedy[0],),))
    assert out.token_ids[0] != greedy[0]
    # a two-token bad word only bans its last token after its first one
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=4, bad_words=((greedy[0], greedy[1]),))
    assert out.token_ids[0] == greedy[0] and out.token_ids[1] != greedy[1]


def test_presence_penalty_prevents_repeats(hf_engine, prompt_ids):
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=24, presence_penalty=1e4)
    assert len(set(out.token_ids)) == len(out.token_ids)
    assert not set(out.token_ids) & set(prompt_ids)  # penalties cover the prompt too


def test_max_new_tokens_and_log_probs(hf_engine, prompt_ids, greedy):
    out = run(hf_engine, input_ids=prompt_ids, max_new_tokens=5, return_log_probs=True)
    assert out.token_ids == greedy[:5] and out.finish_reason is FinishReason.LENGTH
    assert len(out.log_probs) == 5 and all(lp <= 0 for lp in out.log_probs)
    assert out.cum_log_prob == pytest.approx(sum(out.log_probs), abs=1e-4)
    with torch.inference_mode():
        logits = hf_engine.model(torch.tensor([prompt_ids])).logits[0, -1]
    assert out.log_probs[0] == pytest.approx(float(torch.log_softmax(logits.float(), -1)[greedy[0]]), abs=1e-4)


def test_streaming_chunks_concatenate_to_the_whole(hf_engine, prompt_ids, greedy):
    handle = hf_engine.submit(EngineRequest(input_ids=prompt_ids, max_new_tokens=12, streaming=True))
    chunks = list(handle.outputs(60))
    assert [len(c.token_ids) for c in chunks] == [1] * 12  # one token per chunk, final flag on the last token
    assert [t for c in chunks for t in c.token_ids] == greedy
    assert chunks[-1].finished and chunks[-1].finish_reason is FinishReason.LENGTH
    assert not any(c.finished for c in chunks[:-1])


def test_requests_are_interleaved_fairly(hf_engine, prompt_ids):
    order: list[int] = []
    lock = threading.Lock()

    def sink(k):
        def on_output(out):
            with lock:
                order.extend([k] * len(out.token_ids))
        return on_output

    handles = [
        hf_engine.submit(EngineRequest(input_ids=prompt_ids, max_new_tokens=n, streaming=True), on_output=sink(k))
        for k, n in enumerate((30, 30, 5))
    ]
    for h in handles:
        assert h.done.wait(60)
    # the short request started later still finished long before the long ones
    assert order.index(2) < 6 and len(order) - 1 - order[::-1].index(2) < 20
    assert order.count(0) == order.count(1) == 30 and order.count(2) == 5


def test_cancel_stops_work_promptly(hf_engine, prompt_ids):
    handle = hf_engine.submit(EngineRequest(input_ids=prompt_ids, max_new_tokens=5000, streaming=True))
    seen = 0
    started = time.monotonic()
    for out in handle.outputs(60):
        seen += len(out.token_ids)
        if seen == 3:
            handle.cancel()
        if out.finished:
            assert out.finish_reason is FinishReason.CANCELLED
            break
    assert seen < 10 and time.monotonic() - started < 10
    steps = hf_engine.steps
    time.sleep(0.3)
    assert hf_engine.steps == steps  # nothing runs for it any more
    assert hf_engine.num_active == 0


def test_is_cancelled_callback_is_polled(hf_engine, prompt_ids):
    flag = threading.Event()
    handle = hf_engine.submit(
        EngineRequest(input_ids=prompt_ids, max_new_tokens=5000, streaming=True), is_cancelled=flag.is_set
    )
    for n, out in enumerate(handle.outputs(60)):
        if n == 2:
            flag.set()
        if out.finished:
            assert out.finish_reason is FinishReason.CANCELLED
            break
    assert n < 40


def test_bounded_queue_and_out_of_vocab(tiny_llama3, prompt_ids):
    engine = HFEngine(tiny_llama3, max_batch_size=1, max_queue_size=1)
    try:
        long = engine.submit(EngineRequest(input_ids=prompt_ids, max_new_tokens=3000, streaming=True))
        next(long.outputs(60))  # running
        waiting = engine.submit(EngineRequest(input_ids=prompt_ids, max_new_tokens=2))
        with pytest.raises(EngineBusyError, match="max_queue_size 1"):
            engine.submit(EngineRequest(input_ids=prompt_ids, max_new_tokens=2))
        long.cancel()
        assert waiting.result(60).finish_reason is FinishReason.LENGTH
        from koserve.errors import InvalidRequestError

        with pytest.raises(InvalidRequestError, match=r"outside the vocabulary \[0, 128256\)"):
            engine.submit(EngineRequest(input_ids=(1, 200_000), max_new_tokens=2))
    finally:
        engine.shutdown()
