"""Triton python-backend adapter for the engine stand-in: the ``tensorrt_llm`` model on CPU.

Tensor interface and semantics follow NVIDIA's C++ ``tensorrtllm`` backend (tensorrtllm_backend v0.19
``inflight_batcher_llm/tensorrt_llm``): one request = one sequence (batch 1, beam width 1);
``output_ids`` ``[1, 1, n]`` INT32 and ``sequence_length`` ``[1, 1]``; ``cum_log_probs`` ``[1, 1]`` and
``output_log_probs`` ``[1, 1, n]`` only when ``return_log_probs``; ``streaming`` → one response per new token,
the last one carrying the FINAL flag; not streaming → one FINAL response with every token, preceded by the prompt
unless ``exclude_input_in_output`` (streaming responses carry only new tokens); a ``stop`` request cancels the
running requests with the same request id.

The parsing and tensor building below are plain functions over numpy arrays, unit-tested without Triton.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import numpy as np

from koserve.errors import InvalidRequestError
from koserve.guided.spec import parse_guided_decoding
from koserve.llmapi_engine.request import one_text, scalar
from koserve.triton_models.triton_io import error_response
from koserve.cpu_engine.metrics import TritonEngineMetrics
from koserve.cpu_engine.scheduler import Engine, EngineBusyError, EngineClosedError
from koserve.cpu_engine.settings import EngineSettings, create_engine
from koserve.cpu_engine.types import EngineOutput, EngineRequest, FinishReason
from koserve.text.stop_words import parse_word_list
from koserve.triton_models.drain import DrainFlag, drain_response

GetTensor = Callable[[str], "np.ndarray | None"]

# Inputs of NVIDIA's template the stand-in accepts only at their "off" value (the C++ backend implements them; the
# stand-in does not): refused with INVALID_ARG naming the input otherwise.
_UNSUPPORTED_UNLESS = {
    "beam_width": 1,
    "num_return_sequences": 1,
    "return_context_logits": False,
    "return_generation_logits": False,
    "return_perf_metrics": False,
    "return_num_input_tokens": False,  # the outputs they ask for are not declared by the stand-in
    "return_num_output_tokens": False,
    "runtime_top_p_decay": 1.0,  # TensorRT-LLM's default: no decay
}
# Declared inputs the stand-in refuses whenever they hold a value (an empty tensor counts as absent): features of
# other model kinds (encoder-decoder, multimodal, mrope), prompt tuning, LoRA, disaggregated serving, KV-cache
# retention, speculative and lookahead decoding, a non-empty embedding bias.
_UNSUPPORTED_WHEN_GIVEN = (
    "encoder_input_features", "encoder_output_lengths", "cross_attention_mask", "skip_cross_attn_blocks",
    "mrope_rotary_cos_sin", "mrope_position_deltas", "prompt_embedding_table", "lora_task_id", "lora_weights",
    "lora_config", "context_phase_params", "retention_token_range_starts", "retention_token_range_ends",
    "retention_token_range_priorities", "retention_token_range_durations_ms", "retention_decode_priority",
    "retention_decode_duration_ms", "lookahead_window_size",
    "lookahead_ngram_size", "lookahead_verification_set_size", "draft_input_ids", "embedding_bias",
)
# Declared inputs ignored, exactly where TensorRT-LLM 1.x's C++ backend ignores them for a decoder-only model
# (triton_backend/inflight_batcher_llm/src/utils.cc createRequestsFromInputTensors and utils.h InputFieldsNames):
# decoder_input_ids is read only for encoder-decoder models; decoder_input_lengths and prompt_vocab_size are never
# read; runtime_top_p_min is never read (utils.h reads "runtime_top_k_min" instead); prompt_table_extra_ids only with
# a prompt_embedding_table, draft_logits / draft_acceptance_threshold only with draft_input_ids (both refused above);
# runtime_top_p_reset_ids / runtime_top_p_min act only with a top-p decay (refused above); early_stopping,
# len_penalty and beam_search_diversity_rate act only in beam search (beam_width 1 here); an empty embedding_bias
# (NVIDIA's preprocessing sends [1, 0]) is dropped.
IGNORED_INPUTS = (
    "decoder_input_ids", "decoder_input_lengths", "prompt_vocab_size", "runtime_top_p_min", "prompt_table_extra_ids",
    "draft_logits", "draft_acceptance_threshold", "runtime_top_p_reset_ids", "early_stopping", "len_penalty",
    "beam_search_diversity_rate",
)
STREAMING_NOT_DECOUPLED = (
    "Streaming is only supported if model is deployed using decoupled mode: streaming=true needs tensorrt_llm "
    "rendered decoupled (the default; this one was rendered with --engine-not-decoupled and answers each request "
    "with one response)"
)


def _word_tuples(array, name: str) -> tuple[tuple[int, ...], ...]:
    if array is None:
        return ()
    return tuple(tuple(word) for word in parse_word_list(array, name))


def parse_triton_request(
    get: GetTensor,
    settings: EngineSettings,
    *,
    default_end_ids: tuple[int, ...] = (),
    request_id: str = "",
    vocab_size: int | None = None,
    decoupled: bool = True,
) -> EngineRequest:
    """Build an :class:`EngineRequest` from the ``tensorrt_llm`` input tensors, with errors that name the input and
    the limit. Like TensorRT-LLM, ``request_output_len`` is cut to ``max_seq_len - input length`` when the sum is
    longer than ``max_seq_len``; a model that is not ``decoupled`` refuses ``streaming=true`` as the C++ backend
    does (utils.cc createRequestsFromInputTensors)."""
    streaming = scalar(get, "streaming", "bool", default=False)
    if streaming and not decoupled:
        raise InvalidRequestError(STREAMING_NOT_DECOUPLED)
    ids = get("input_ids")
    if ids is None:
        raise InvalidRequestError("input_ids is required")
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise InvalidRequestError(f"input_ids has dtype {ids.dtype}; expected INT32")
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise InvalidRequestError(
                f"input_ids has batch size {ids.shape[0]}: the CPU stand-in takes one sequence per request "
                f"(shape [1, L])"
            )
        ids = ids[0]
    elif ids.ndim != 1:
        raise InvalidRequestError(f"input_ids must have shape [1, L], got {list(ids.shape)}")
    length = scalar(get, "input_lengths", "int", default=len(ids))
    if not 1 <= length <= len(ids):
        raise InvalidRequestError(f"input_lengths is {length} but input_ids holds {len(ids)} tokens")
    prompt = tuple(int(t) for t in ids[:length])
    if vocab_size is not None:  # as TensorRT-LLM (LlmRequest::checkTokenIdRange): every id in [0, vocab size)
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise InvalidRequestError(
                f"input_ids hold {len(bad)} token id(s) outside the vocabulary [0, {vocab_size}), e.g. {bad[0]}"
            )
    if length > settings.max_input_len:
        raise InvalidRequestError(
            f"input length {length} exceeds the engine's max_input_len {settings.max_input_len}"
        )
    out_len = scalar(get, "request_output_len", "int")
    if out_len is None:
        raise InvalidRequestError("request_output_len is required")
    max_out = settings.max_seq_len - 1
    if out_len <= 0 or out_len > max_out:
        raise InvalidRequestError(
            f"request_output_len must be in [1, {max_out}] (max_seq_len {settings.max_seq_len} - 1), got {out_len}"
        )
    out_len = min(out_len, settings.max_seq_len - length)

    for name, allowed in _UNSUPPORTED_UNLESS.items():
        kind = "bool" if isinstance(allowed, bool) else "float" if isinstance(allowed, float) else "int"
        value = scalar(get, name, kind)
        if value is not None and value != allowed:
            raise InvalidRequestError(f"{name}={value} is not supported by the CPU engine stand-in (only {allowed})")
    for name in _UNSUPPORTED_WHEN_GIVEN:
        value = get(name)
        if value is not None and np.asarray(value).size > 0:
            raise InvalidRequestError(
                f"{name} is not supported by the CPU engine stand-in (leave it out; it holds "
                f"{np.asarray(value).size} value(s))"
            )

    end_id = scalar(get, "end_id", "int")
    if end_id is not None and vocab_size is not None and not -1 <= end_id < vocab_size:  # LlmRequest::validate
        raise InvalidRequestError(
            f"end_id {end_id} is outside [-1, {vocab_size}) (the vocabulary has {vocab_size} ids)"
        )
    stop_words = get("stop_words_list")
    bad_words = get("bad_words_list")
    seed = scalar(get, "seed", "uint", default=0)
    exclude = scalar(get, "exclude_input_in_output", "bool")
    temperature = scalar(get, "temperature", "float", default=1.0)
    top_p = scalar(get, "runtime_top_p", "float", default=0.0)
    top_k = scalar(get, "runtime_top_k", "int", default=0)
    for name, value in (("temperature", temperature), ("runtime_top_p", top_p)):
        if not np.isfinite(value):
            raise InvalidRequestError(f"{name} must be a finite number, got {value}")
    return EngineRequest(
        input_ids=prompt,
        max_new_tokens=int(out_len),
        end_ids=(int(end_id),) if end_id is not None else tuple(default_end_ids),
        pad_id=scalar(get, "pad_id", "int"),
        stop_words=_word_tuples(stop_words, "stop_words_list"),
        bad_words=_word_tuples(bad_words, "bad_words_list"),
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        seed=int(seed),
        repetition_penalty=float(scalar(get, "repetition_penalty", "float", default=1.0)),
        presence_penalty=float(scalar(get, "presence_penalty", "float", default=0.0)),
        frequency_penalty=float(scalar(get, "frequency_penalty", "float", default=0.0)),
        min_tokens=int(scalar(get, "min_tokens", "int", default=0)),
        streaming=streaming,
        exclude_input_in_output=settings.exclude_input_in_output if exclude is None else exclude,
        return_log_probs=scalar(get, "return_log_probs", "bool", default=False),
        request_id=request_id,
        guided=parse_guided_decoding(one_text(get, "guided_decoding_guide_type"), one_text(get, "guided_decoding_guide")),
    )


def output_arrays(request: EngineRequest, out: EngineOutput) -> dict[str, np.ndarray]:
    """The response tensors for one output chunk, shaped like the C++ backend's (batch 1, beam 1)."""
    tokens = list(out.token_ids)
    if not request.streaming and not request.exclude_input_in_output:
        tokens = list(request.input_ids) + tokens
    arrays = {
        "output_ids": np.asarray(tokens, dtype=np.int32).reshape(1, 1, len(tokens)),
        "sequence_length": np.asarray([[len(tokens)]], dtype=np.int32),
    }
    if request.return_log_probs:
        log_probs = list(out.log_probs or [])
        arrays["cum_log_probs"] = np.asarray([[out.cum_log_prob or 0.0]], dtype=np.float32)
        arrays["output_log_probs"] = np.asarray(log_probs, dtype=np.float32).reshape(1, 1, len(log_probs))
    return arrays


def _vocab_size(engine: Engine, settings: EngineSettings) -> int | None:
    """The ids the engine knows: the checkpoint's vocabulary (hf), the tokenizer's (replay)."""
    size = getattr(engine, "vocab_size", None)
    if size is None and settings.mode == "replay":
        from pathlib import Path  # noqa: PLC0415

        from tokenizers import Tokenizer  # noqa: PLC0415

        path = Path(settings.tokenizer_dir or settings.model_dir)
        size = Tokenizer.from_file(str(path / "tokenizer.json" if path.is_dir() else path)).get_vocab_size()
    return size


class TritonEngineModel:
    """The body of ``model_repository/tensorrt_llm_cpu/1/model.py``; ``pb_utils`` is Triton's
    ``triton_python_backend_utils`` module, passed in by the thin ``model.py``.

    Decoupled or not (``model_transaction_policy``), every request is answered through its response sender and
    ``execute`` returns at once; not decoupled (the python backend's default mode, which takes a sender since
    24.06), each request gets exactly one response carrying the FINAL flag: the whole output, an error, or an empty
    response for a ``stop`` request (as NVIDIA's backend answers a stop)."""

    def __init__(self, pb_utils) -> None:
        self.pb = pb_utils

    def initialize(self, args: dict) -> None:
        pb_utils = self.pb
        config = json.loads(args["model_config"])
        self.decoupled = bool(pb_utils.using_decoupled_model_transaction_policy(config))
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.settings = EngineSettings.from_parameters(params)
        self.default_end_ids = self.settings.default_end_ids()
        self.engine: Engine = create_engine(self.settings)
        self.vocab_size = _vocab_size(self.engine, self.settings)
        self._lock = threading.Lock()
        self._by_request_id: dict[str, list] = {}
        self.drain = DrainFlag()
        # NVIDIA's backend metric families on Triton's metrics port (koserve.cpu_engine.metrics)
        self.metrics = TritonEngineMetrics(
            pb_utils, args.get("model_name", "tensorrt_llm"), str(args.get("model_version", "1")),
            lambda: self.engine.stats(self.settings.max_seq_len),
        ).start()

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
                    else:  # default mode: exactly one response per request
                        sender.send(pb.InferenceResponse(output_tensors=[]), flags=final)
                    continue
                if self.drain.draining():  # koserve serve drains: stops still work, new requests do not start
                    sender.send(drain_response(pb), flags=final)
                    continue
                ereq = parse_triton_request(
                    get, self.settings, default_end_ids=self.default_end_ids, request_id=request_id,
                    vocab_size=self.vocab_size, decoupled=self.decoupled,
                )
                if ereq.guided is not None and getattr(self.engine, "grammars", None) is not None:
                    # a new guide may take seconds to compile (bounded): not on Triton's execute thread, which would
                    # hold up every other request of this model meanwhile
                    threading.Thread(target=self._submit_guided, args=(ereq, sender), daemon=True,
                                     name="koserve-guide-compile").start()
                    continue
                self._submit(ereq, sender)
            except (InvalidRequestError, EngineBusyError, EngineClosedError) as exc:
                sender.send(self._error(str(exc), invalid=isinstance(exc, InvalidRequestError)), flags=final)
            except Exception as exc:  # noqa: BLE001 - answer the client, keep serving
                sender.send(self._error(f"tensorrt_llm stand-in: {type(exc).__name__}: {exc}", False), flags=final)
        return None

    def _submit_guided(self, ereq: EngineRequest, sender) -> None:
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            self.engine.grammars.get(ereq.guided)  # compiled and cached, or refused naming the limit
            self._submit(ereq, sender)
        except (InvalidRequestError, EngineBusyError, EngineClosedError) as exc:
            sender.send(self._error(str(exc), invalid=isinstance(exc, InvalidRequestError)), flags=final)
        except Exception as exc:  # noqa: BLE001 - answer the client, keep serving
            sender.send(self._error(f"tensorrt_llm stand-in: {type(exc).__name__}: {exc}", False), flags=final)

    def _submit(self, ereq: EngineRequest, sender) -> None:
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        holder: list = []

        def on_output(out: EngineOutput) -> None:
            try:
                if out.finish_reason is FinishReason.ERROR:
                    sender.send(self._error(out.error or "engine error", invalid=False), flags=final)
                    return
                tensors = [pb.Tensor(k, v) for k, v in output_arrays(ereq, out).items()]
                try:
                    sender.send(pb.InferenceResponse(output_tensors=tensors), flags=final if out.finished else 0)
                except Exception:
                    if out.finish_reason is not FinishReason.CANCELLED:
                        raise
                    if self.decoupled:
                        sender.send(flags=final)  # the client is gone: just close the stream
                    else:
                        sender.send(self._error("request cancelled", invalid=False), flags=final)
            finally:
                if out.finished and ereq.request_id:
                    with self._lock:
                        handles = self._by_request_id.get(ereq.request_id, [])
                        for h in holder:
                            if h in handles:
                                handles.remove(h)
                        if not handles:
                            self._by_request_id.pop(ereq.request_id, None)

        if ereq.request_id:
            # register before submitting: the engine may finish the request before submit returns
            with self._lock:
                handle = self.engine.submit(ereq, on_output=on_output, is_cancelled=sender.is_cancelled)
                holder.append(handle)
                if not handle.done.is_set():
                    self._by_request_id.setdefault(ereq.request_id, []).append(handle)
        else:
            self.engine.submit(ereq, on_output=on_output, is_cancelled=sender.is_cancelled)

    def _stop(self, request_id: str) -> None:
        if not request_id:
            raise InvalidRequestError("stop=true needs the request id of the request to stop")
        with self._lock:
            handles = list(self._by_request_id.get(request_id, []))
        for handle in handles:
            handle.cancel()

    def finalize(self) -> None:
        self.metrics.stop()
        self.engine.shutdown()
