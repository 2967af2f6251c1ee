"""The part of TensorRT-LLM's LLM API that koserve's engine step calls, on the CPU stand-in's scheduler.

Test server only: ``koserve.llmapi_engine.runtime`` imports this module when the rendered parameter ``llm_runtime``
is ``cpu_stand_in``. Names and behaviour follow TensorRT-LLM 1.2.1 (cited per fact in
tests/engines/data/trtllm-1.2.1-llmapi-contract.json, which tests/llmapi/test_llmapi_contract.py checks this module
against):

- ``LLM(model, backend=..., skip_tokenizer_init=..., tensor_parallel_size=..., max_batch_size=..., ...)``;
  ``generate_async(inputs, sampling_params, streaming=False)`` returns a :class:`RequestOutput` at once;
  ``shutdown()``;
- :class:`RequestOutput`: ``async for`` yields the same object after each engine response, ``outputs[0]`` a
  :class:`CompletionOutput` whose ``token_ids`` grow (``token_ids_diff`` the new ones), ``finish_reason`` 'stop' /
  'length' / 'cancelled' at the end, ``finished``; ``abort()``, ``aborted()``;
- :class:`SamplingParams` and :class:`KvCacheConfig` with the upstream field names the engine step uses;
- :class:`GuidedDecodingParams` (``json`` / ``json_object`` / ``regex`` / ``grammar``; one at a time), honoured with
  real xgrammar masks (:mod:`koserve.cpu_engine.guided`) when the LLM was made with
  ``guided_decoding_backend="xgrammar"``.

Like TensorRT-LLM's executor, an end id ends the sequence without being emitted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
from dataclasses import dataclass, field
from typing import Optional

from koserve.cpu_engine.scheduler import Engine
from koserve.cpu_engine.settings import EngineSettings, create_engine
from koserve.cpu_engine.types import EngineOutput, EngineRequest, FinishReason
from koserve.guided.spec import GuidedDecoding

# executor FinishReason → CompletionOutput.finish_reason (tensorrt_llm/executor/result.py _handle_sequence)
_FINISH_REASONS = {FinishReason.END_ID: "stop", FinishReason.STOP_WORDS: "stop", FinishReason.LENGTH: "length",
                   FinishReason.CANCELLED: "cancelled"}


@dataclass(kw_only=True)
class GuidedDecodingParams:
    """Upstream ``GuidedDecodingParams``: the fields and defaults; only one guide per request."""

    json: Optional[str | dict] = None
    regex: Optional[str] = None
    grammar: Optional[str] = None
    json_object: bool = False
    structural_tag: Optional[str] = None

    def _validate(self) -> None:
        num_guides = sum(bool(getattr(self, f)) for f in ("json", "regex", "grammar", "json_object",
                                                            "structural_tag"))
        if num_guides > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {num_guides}.")

    def to_guide(self) -> GuidedDecoding | None:
        """The stand-in engine's guide (NVIDIA's C++ guide types), or None when no field is set."""
        self._validate()
        if self.structural_tag:
            raise ValueError("structural_tag guides are not implemented by the CPU stand-in")
        if self.json:
            schema = self.json if isinstance(self.json, str) else json.dumps(self.json, ensure_ascii=False)
            return GuidedDecoding("json_schema", schema)
        if self.json_object:
            return GuidedDecoding("json", "")
        if self.regex:
            return GuidedDecoding("regex", self.regex)
        if self.grammar:
            return GuidedDecoding("ebnf_grammar", self.grammar)
        return None


@dataclass(kw_only=True)
class SamplingParams:
    """The upstream ``SamplingParams`` fields the stand-in honours (same names and defaults)."""

    end_id: Optional[int] = None
    pad_id: Optional[int] = None
    max_tokens: int = 32
    bad_token_ids: Optional[list[int]] = None
    stop_token_ids: Optional[list[int]] = None
    n: int = 1
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    temperature: Optional[float] = None
    min_tokens: Optional[int] = None
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logprobs: Optional[int] = None
    exclude_input_from_output: bool = True
    guided_decoding: Optional[GuidedDecodingParams] = None
    detokenize: bool = True

    def __post_init__(self) -> None:
        if self.pad_id is None:  # as upstream
            self.pad_id = self.end_id
        if self.n != 1:
            raise ValueError(f"the CPU stand-in generates one sequence per request, got n={self.n}")


@dataclass(kw_only=True)
class KvCacheConfig:
    """Upstream ``KvCacheConfig``'s fields the engine step sets (no KV-cache pool on CPU: recorded only)."""

    enable_block_reuse: bool = True
    free_gpu_memory_fraction: Optional[float] = None


@dataclass
class CompletionOutput:
    """One output sequence (upstream ``CompletionOutput``: the fields the engine step reads)."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: Optional[float] = None
    logprobs: list[float] = field(default_factory=list)
    finish_reason: Optional[str] = None
    stop_reason: Optional[int | str] = None
    _last_token_ids_len: int = 0

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len:]


class RequestOutput:
    """What ``generate_async`` returns: async-iterable, abortable (upstream ``RequestOutput``)."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], sampling_params: SamplingParams):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self.outputs = [CompletionOutput(0)]
        self._done = False
        self._aborted = False
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()  # upstream needs an event loop for async iteration too
        self._handle = None

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        """Abort the request: it ends with finish_reason 'cancelled' at the engine's next step."""
        self._aborted = True
        if self._handle is not None:
            self._handle.cancel()

    def aborted(self) -> bool:
        return self._aborted

    def _on_output(self, out: EngineOutput | BaseException) -> None:  # the scheduler or a submit thread
        self._loop.call_soon_threadsafe(self._queue.put_nowait, out)

    def _apply(self, out: EngineOutput) -> None:
        completion = self.outputs[0]
        completion._last_token_ids_len = len(completion.token_ids)
        completion.token_ids.extend(out.token_ids)
        if out.log_probs is not None:
            completion.logprobs.extend(out.log_probs)
            completion.cumulative_logprob = out.cum_log_prob
        if out.finished:
            self._done = True
            if out.finish_reason is FinishReason.ERROR:
                raise RuntimeError(out.error or "the CPU engine failed")
            completion.finish_reason = _FINISH_REASONS.get(out.finish_reason)

    def __aiter__(self):
        return self

    async def __anext__(self) -> "RequestOutput":
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, BaseException):  # the request could not start (e.g. its guide does not compile)
            self._done = True
            raise item
        self._apply(item)
        return self


class LLM:
    """``tensorrt_llm.LLM``'s constructor arguments and the calls the engine step makes, on the CPU scheduler.

    ``stand_in_parameters``: the Triton model's config parameters (:class:`EngineSettings`: hf or replay mode,
    checkpoint or tokenizer, limits). The LLM-API arguments are recorded in ``self.args``.
    """

    def __init__(self, model: str = "", *, tokenizer: str | None = None, backend: str = "pytorch",
                 skip_tokenizer_init: bool = False,
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1, max_batch_size: int | None = None,
                 max_num_tokens: int | None = None, max_input_len: int | None = None,
                 max_seq_len: int | None = None, kv_cache_config: KvCacheConfig | None = None,
                 guided_decoding_backend: str | None = None, stand_in_parameters: dict | None = None):
        if backend != "pytorch":
            raise ValueError(f"the CPU stand-in implements the PyTorch backend's LLM only, got backend={backend!r}")
        if tensor_parallel_size != 1 or pipeline_parallel_size != 1:
            raise ValueError("the CPU stand-in runs one rank (tensor_parallel_size = pipeline_parallel_size = 1)")
        self.args = {"model": model, "tokenizer": tokenizer, "backend": backend,
                     "skip_tokenizer_init": skip_tokenizer_init, "max_batch_size": max_batch_size, "max_num_tokens": max_num_tokens,
                     "max_input_len": max_input_len, "max_seq_len": max_seq_len,
                     "kv_cache_config": kv_cache_config, "guided_decoding_backend": guided_decoding_backend}
        if guided_decoding_backend not in (None, "xgrammar"):
            raise ValueError(f"the CPU stand-in implements guided_decoding_backend 'xgrammar' only, got "
                             f"{guided_decoding_backend!r}")
        params = dict(stand_in_parameters or {})
        # the masks need NVIDIA's tokenizer-info file (stand-in parameter xgrammar_tokenizer_info_path); upstream
        # builds the same information from the tokenizer the LLM loads
        params["guided_decoding_backend"] = guided_decoding_backend or ""
        if max_batch_size:
            params["max_batch_size"] = str(max_batch_size)
        self.settings = EngineSettings.from_parameters(params)
        self.engine: Engine = create_engine(self.settings)
        self._ids = itertools.count(1)
        self._guided_submits = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="koserve-llmapi-guided")

    def generate_async(self, inputs, sampling_params: SamplingParams | None = None, streaming: bool = False,
                       **_ignored) -> RequestOutput:
        """Submit one prompt (a list of token ids, or ``{"prompt_token_ids": [...]}``)."""
        ids = inputs["prompt_token_ids"] if isinstance(inputs, dict) else inputs
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        if sampling_params is None or sampling_params.end_id is None:
            # upstream: without a tokenizer the end id must be given (LLM._prepare_sampling_params)
            raise ValueError("tokenizer is required to reset end_id if it is None, or you can explicitly specify "
                             "the end_id for sampling_params")
        sp = sampling_params
        result = RequestOutput(next(self._ids), list(ids), sp)
        request = EngineRequest(
            input_ids=tuple(ids), max_new_tokens=sp.max_tokens, end_ids=(sp.end_id,), pad_id=sp.pad_id,
            stop_words=tuple((t,) for t in sp.stop_token_ids or ()),
            bad_words=tuple((t,) for t in sp.bad_token_ids or ()),
            # upstream None = the runtime's default (executor SamplingConfig): temperature 1, top_k 0, top_p 0,
            # seed 0 — the stand-in's EngineRequest defaults are those same values
            temperature=1.0 if sp.temperature is None else sp.temperature,
            top_k=0 if sp.top_k is None else sp.top_k, top_p=0.0 if sp.top_p is None else sp.top_p,
            seed=0 if sp.seed is None else sp.seed,
            repetition_penalty=1.0 if sp.repetition_penalty is None else sp.repetition_penalty,
            presence_penalty=sp.presence_penalty or 0.0, frequency_penalty=sp.frequency_penalty or 0.0,
            min_tokens=sp.min_tokens or 0, streaming=streaming, exclude_input_in_output=True,
            return_log_probs=bool(sp.logprobs),
            guided=sp.guided_decoding.to_guide() if sp.guided_decoding is not None else None,
        )
        if request.guided is None:
            self._submit(result, request)
        else:  # compiling a new guide takes up to the compile bound: not on the caller's event loop
            self._guided_submits.submit(self._submit_or_fail, result, request)
        return result

    def _submit(self, result: RequestOutput, request: EngineRequest) -> None:
        result._handle = self.engine.submit(request, on_output=result._on_output)
        if result._aborted:
            result._handle.cancel()

    def _submit_or_fail(self, result: RequestOutput, request: EngineRequest) -> None:
        try:
            self._submit(result, request)
        except Exception as exc:  # noqa: BLE001 - raised to the caller by the RequestOutput's iteration
            result._on_output(exc)

    def shutdown(self) -> None:
        self._guided_submits.shutdown(wait=False, cancel_futures=True)
        self.engine.shutdown()


__all__ = ["LLM", "CompletionOutput", "GuidedDecodingParams", "KvCacheConfig", "RequestOutput", "SamplingParams"]
