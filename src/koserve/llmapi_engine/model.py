"""The Triton python-backend edge of the LLM API engine step (``model_repository/tensorrt_llm_llmapi/1/model.py``).

One asyncio event loop in a thread of the stub drives the LLM API: ``LLM.generate_async(ids, SamplingParams,
streaming=True)`` per request, iterated with ``async for``, every response turned into the C++ backend's tensors by
:class:`~koserve.llmapi_engine.tracker.OutputTracker`. The LLM is always iterated streaming, also for a request
that is not: stop words are matched here, which needs the tokens as they come. Cancellation: a ``stop`` request
with the same id, or the client gone (``is_cancelled()`` polled every ``cancellation_check_period_ms``), aborts the
request (``RequestOutput.abort()``) and ends its stream at once. Requests carry the koserve drain check.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass

import numpy as np

from koserve.errors import ConfigError, InvalidRequestError
from koserve.triton_models.triton_io import error_response
from koserve.llmapi_engine.request import EngineLimits, GenerationRequest, parse_request, scalar
from koserve.llmapi_engine.runtime import load_runtime
from koserve.llmapi_engine.sampling import GUIDED_DECODING_BACKEND, LlmSettings, llm_kwargs, sampling_kwargs
from koserve.llmapi_engine.tracker import Chunk, FinishReason, OutputTracker
from koserve.triton_models.drain import DrainFlag, drain_response

_TRUE = {"1", "true", "yes", "on"}


def response_arrays(request: GenerationRequest, chunk: Chunk) -> dict[str, np.ndarray]:
    """The response tensors of one chunk, shaped like the C++ backend's (batch 1, beam 1)."""
    tokens = list(chunk.token_ids)
    if not request.streaming and not request.exclude_input_in_output:
        tokens = list(request.prompt_token_ids) + tokens
    arrays = {
        "output_ids": np.asarray(tokens, dtype=np.int32).reshape(1, 1, len(tokens)),
        "sequence_length": np.asarray([[len(tokens)]], dtype=np.int32),
    }
    if request.return_log_probs:
        log_probs = list(chunk.log_probs or [])
        arrays["cum_log_probs"] = np.asarray([[chunk.cum_log_prob or 0.0]], dtype=np.float32)
        arrays["output_log_probs"] = np.asarray(log_probs, dtype=np.float32).reshape(1, 1, len(log_probs))
    return arrays


def settings_from_parameters(params: dict[str, str]) -> tuple[LlmSettings, EngineLimits, dict]:
    """The LLM's settings, the request limits and the step's own options from the config ``parameters``."""
    def num(key, cast, default):
        raw = params.get(key, "").strip()
        return cast(raw) if raw else default

    max_seq_len = num("max_seq_len", int, 4096)
    guided = params.get("guided_decoding_backend", "").strip()
    if guided not in ("", GUIDED_DECODING_BACKEND):
        raise ConfigError(f"parameter guided_decoding_backend must be {GUIDED_DECODING_BACKEND!r} or empty, "
                          f"got {guided!r}")
    settings = LlmSettings(
        model_dir=params.get("model_dir", ""),
        tensor_parallel_size=num("tensor_parallel_size", int, 1),
        pipeline_parallel_size=num("pipeline_parallel_size", int, 1),
        max_batch_size=num("max_batch_size", int, 64),
        max_num_tokens=num("max_num_tokens", int, 8192),
        max_input_len=num("max_input_len", int, max_seq_len - 1),
        max_seq_len=max_seq_len,
        kv_cache_free_gpu_memory_fraction=num("kv_cache_free_gpu_memory_fraction", float, 0.9),
        enable_block_reuse=params.get("enable_kv_cache_reuse", "true").strip().lower() in _TRUE,
        guided_decoding=bool(guided),
        tokenizer_dir=params.get("tokenizer_dir", "").strip(),
    )
    end_ids = tuple(int(v) for v in params.get("end_ids", "").replace(",", " ").split())
    limits = EngineLimits(
        max_input_len=num("max_input_len", int, max_seq_len - 1),
        max_seq_len=max_seq_len,
        vocab_size=num("vocab_size", int, None),
        default_end_ids=end_ids,
        exclude_input_in_output=params.get("exclude_input_in_output", "true").strip().lower() in _TRUE,
        guided_decoding=bool(guided),
    )
    options = {
        "llm_runtime": params.get("llm_runtime", "tensorrt_llm").strip(),
        "cancel_check_s": num("cancellation_check_period_ms", float, 100.0) / 1000.0,
    }
    return settings, limits, options


@dataclass
class _Running:
    request: GenerationRequest
    sender: object
    tracker: OutputTracker
    output: object = None  # the RequestOutput once generate_async returned
    cancelled: bool = False


class LlmApiEngineModel:
    """The body of the thin ``model.py``; ``pb_utils`` is Triton's ``triton_python_backend_utils``."""

    def __init__(self, pb_utils) -> None:
        self.pb = pb_utils

    # -- lifecycle -------------------------------------------------------------------------------------------
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.decoupled = bool(self.pb.using_decoupled_model_transaction_policy(config))
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        settings, self.limits, options = settings_from_parameters(params)
        self.max_batch_size = settings.max_batch_size
        self.cancel_check_s = max(0.001, options["cancel_check_s"])
        self.runtime = load_runtime(options["llm_runtime"], params)
        self.llm = self.runtime.make_llm(**llm_kwargs(settings, self.runtime.kv_cache_config_cls))
        self.drain = DrainFlag()
        self._running: dict[int, _Running] = {}
        self._by_request_id: dict[str, list[_Running]] = {}
        self._lock = threading.Lock()
        self._closing = False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="koserve-llmapi-loop", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._watch_cancellation(), self.loop)
        self._gauges = self._request_gauges(args.get("model_name", "tensorrt_llm"), str(args.get("model_version", 1)))
        self._update_gauges()

    def finalize(self) -> None:
        self._closing = True
        with self._lock:
            running = list(self._running.values())
        for item in running:
            self.loop.call_soon_threadsafe(self._cancel, item, "the engine step is shutting down")
        try:
            self.llm.shutdown()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)

    def _request_gauges(self, model: str, version: str):
        """TensorRT-LLM's ``nv_trt_llm_request_metrics`` ``active``/``waiting`` (what koserve serve's drain and the
        endpoint picker read); the LLM API does not export Triton metrics itself. Requests here are all active."""
        family_cls = getattr(self.pb, "MetricFamily", None)
        if family_cls is None:
            return None
        family = family_cls(name="nv_trt_llm_request_metrics", description="TensorRT-LLM request metrics",
                            kind=family_cls.GAUGE)
        self._metric_family = family  # Triton deletes the metrics with their family: keep it alive
        return {kind: family.Metric(labels={"model": model, "version": version, "request_type": kind})
                for kind in ("active", "waiting", "max", "scheduled", "context")}

    def _update_gauges(self) -> None:
        if self._gauges is None:
            return
        active = float(len(self._running))
        for kind, value in (("active", active), ("scheduled", active), ("waiting", 0.0), ("context", 0.0),
                            ("max", float(self.max_batch_size))):
            self._gauges[kind].set(value)

    # -- requests --------------------------------------------------------------------------------------------
    def _error(self, message: str, invalid: bool = True):
        return error_response(self.pb, message, invalid=invalid)

    def execute(self, requests):
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            sender = request.get_response_sender()

            def get(name, _r=request):
                t = pb.get_input_tensor_by_name(_r, name)
                return None if t is None else t.as_numpy()

            request_id = request.request_id() or ""
            try:
                if scalar(get, "stop", "bool", default=False):
                    self._stop(request_id)
                    if self.decoupled:
                        sender.send(flags=final)
                    else:
                        sender.send(pb.InferenceResponse(output_tensors=[]), flags=final)
                    continue
                if self.drain.draining():
                    sender.send(drain_response(pb), flags=final)
                    continue
                if self._closing:
                    sender.send(self._error("the engine step is shutting down", invalid=False), flags=final)
                    continue
                greq = parse_request(get, self.limits, request_id=request_id, decoupled=self.decoupled)
                self._submit(greq, sender)
            except InvalidRequestError as exc:
                sender.send(self._error(str(exc)), flags=final)
            except Exception as exc:  # noqa: BLE001 - answer the client, keep serving
                sender.send(self._error(f"tensorrt_llm (LLM API): {type(exc).__name__}: {exc}", False), flags=final)
        return None

    def _submit(self, request: GenerationRequest, sender) -> None:
        item = _Running(request, sender, OutputTracker(request))
        key = id(item)
        with self._lock:
            self._running[key] = item
            if request.request_id:
                self._by_request_id.setdefault(request.request_id, []).append(item)
            self._update_gauges()
        asyncio.run_coroutine_threadsafe(self._generate(key, item), self.loop)

    def _stop(self, request_id: str) -> None:
        if not request_id:
            raise InvalidRequestError("stop=true needs the request id of the request to stop")
        with self._lock:
            items = list(self._by_request_id.get(request_id, []))
        for item in items:
            self.loop.call_soon_threadsafe(self._cancel, item, None)

    async def _generate(self, key: int, item: _Running) -> None:
        tracker = item.tracker
        try:
            params = self.runtime.sampling_params_cls(
                **sampling_kwargs(item.request, self.runtime.guided_decoding_params_cls))
            if item.cancelled:
                return
            item.output = self.llm.generate_async(list(item.request.prompt_token_ids), sampling_params=params,
                                                  streaming=True)
            async for out in item.output:
                if item.cancelled:
                    break
                completion = out.outputs[0]
                chunk = tracker.update(completion.token_ids,
                                       completion.logprobs if item.request.return_log_probs else None,
                                       completion.finish_reason, bool(out.finished))
                if chunk is not None:
                    self._send(item, chunk)
                if tracker.finished:
                    if not out.finished:
                        item.output.abort()  # an end id / stop word / length the tracker saw first
                    break
            if not tracker.finished and not item.cancelled:  # the iterator ended without a final output
                self._send_final(item, FinishReason.END_ID)
        except InvalidRequestError as exc:  # e.g. a guide that does not compile: the client's error
            if not item.cancelled and item.tracker.end(FinishReason.ERROR, str(exc)) is not None:
                item.sender.send(self._error(str(exc)), flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
            if not item.cancelled:
                self._send_final(item, FinishReason.ERROR, f"tensorrt_llm (LLM API) failed: {type(exc).__name__}: "
                                                           f"{exc}")
        finally:
            with self._lock:
                self._running.pop(key, None)
                same = self._by_request_id.get(item.request.request_id)
                if same is not None:
                    if item in same:
                        same.remove(item)
                    if not same:
                        self._by_request_id.pop(item.request.request_id, None)
                self._update_gauges()

    def _cancel(self, item: _Running, error: str | None) -> None:
        """In the loop thread: end the stream now and abort the LLM API request."""
        if item.cancelled or item.tracker.finished:
            return
        item.cancelled = True
        self._send_final(item, FinishReason.CANCELLED, error)
        if item.output is not None:
            try:
                item.output.abort()
            except Exception:  # noqa: BLE001 - already finished in the engine
                pass

    async def _watch_cancellation(self) -> None:
        """Clients that went away: Triton reports them per request (``is_cancelled``); poll every period."""
        while not self._closing:
            await asyncio.sleep(self.cancel_check_s)
            with self._lock:
                items = list(self._running.values())
            for item in items:
                if item.tracker.final_sent:  # Triton frees a request's sender after its final response
                    continue
                try:
                    gone = item.sender.is_cancelled()
                except Exception:  # noqa: BLE001 - a broken sender counts as a client that went away
                    gone = True
                if gone:
                    self._cancel(item, None)

    def _send_final(self, item: _Running, reason: FinishReason, error: str | None = None) -> None:
        chunk = item.tracker.end(reason, error)
        if chunk is not None:
            self._send(item, chunk)

    def _send(self, item: _Running, chunk: Chunk) -> None:
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if chunk.finish_reason is FinishReason.ERROR:
            item.sender.send(self._error(chunk.error or "engine error", invalid=False), flags=final)
            return
        tensors = [pb.Tensor(k, v) for k, v in response_arrays(item.request, chunk).items()]
        try:
            item.sender.send(pb.InferenceResponse(output_tensors=tensors), flags=final if chunk.finished else 0)
        except Exception:
            if chunk.finish_reason is not FinishReason.CANCELLED:
                if not chunk.finished:  # the client is gone: stop generating for it
                    self._cancel(item, None)
                    return
                raise
            if self.decoupled:
                item.sender.send(flags=final)
            else:
                item.sender.send(self._error("request cancelled", invalid=False), flags=final)
