"""The CPU stand-in's LLM API object behaves as the cited upstream facts say: async iteration over one growing
``RequestOutput``, ``abort()`` ending it 'cancelled', ``finish_reason`` names, the end id required without a
tokenizer, the end id never emitted."""

from __future__ import annotations

import asyncio

import pytest

from koserve.cpu_engine.llmapi import LLM, KvCacheConfig, SamplingParams
from koserve.fixtures import tokenizer_dir


@pytest.fixture(scope="module")
def llm():
    instance = LLM("", backend="pytorch", skip_tokenizer_init=True, max_batch_size=4,
                   kv_cache_config=KvCacheConfig(), stand_in_parameters={
                       "mode": "replay", "tokenizer_dir": str(tokenizer_dir("llama3")), "replay_delay_ms": "5",
                       "max_input_len": "64", "max_seq_len": "128"})
    yield instance
    instance.shutdown()


async def _collect(result, limit=500):
    seen = []
    async for out in result:
        seen.append((list(out.outputs[0].token_ids_diff), len(out.outputs[0].token_ids), out.finished))
        if len(seen) >= limit:
            break
    return seen


def test_streaming_yields_the_same_growing_output(llm):
    async def run():
        result = llm.generate_async([128000, 9906], SamplingParams(end_id=128009, max_tokens=6), streaming=True)
        steps = await asyncio.wait_for(_collect(result), 30)
        return result, steps

    result, steps = asyncio.run(run())
    assert [n for _, n, _ in steps] == sorted(n for _, n, _ in steps) and steps[-1][1] == 6
    assert sum(len(d) for d, _, _ in steps) == 6 and steps[-1][2] and result.finished
    assert result.outputs[0].finish_reason == "length"


def test_abort_ends_the_request_cancelled(llm):
    async def run():
        result = llm.generate_async([128000, 9906], SamplingParams(end_id=128009, max_tokens=100), streaming=True)
        first = await asyncio.wait_for(result.__anext__(), 30)
        first.abort()
        await asyncio.wait_for(_collect(result), 30)
        return result

    result = asyncio.run(run())
    assert result.aborted() and result.finished and result.outputs[0].finish_reason == "cancelled"
    assert len(result.outputs[0].token_ids) < 100


def test_end_id_is_required_without_a_tokenizer(llm):
    async def run():
        return llm.generate_async([1, 2], SamplingParams(max_tokens=2))

    with pytest.raises(ValueError, match="explicitly specify the end_id"):
        asyncio.run(run())


def test_only_the_pytorch_backend_on_one_rank():
    with pytest.raises(ValueError, match="backend"):
        LLM("", backend="tensorrt")
    with pytest.raises(ValueError, match="one rank"):
        LLM("", tensor_parallel_size=2)
