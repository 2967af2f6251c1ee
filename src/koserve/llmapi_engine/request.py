"""The ``tensorrt_llm`` input tensors → one :class:`GenerationRequest`, with errors that name the input and the limit.

The names, dtypes and rules are the C++ backend's (TensorRT-LLM 1.2.1 ``triton_backend/inflight_batcher_llm``,
``tests/engines/data/trtllm-1.2.1-backend-contract.json``): one sequence per request, ``request_output_len`` cut to
``max_seq_len - input length``, ``streaming=true`` refused unless the model is decoupled. Inputs the LLM API cannot
express are refused by name unless absent or off (docs/serving.md, "The PyTorch (LLM API) engine"). Guided decoding
(``guided_decoding_guide_type`` / ``guided_decoding_guide``) is validated by :mod:`koserve.guided.spec`, as on the
C++ path, and refused by name when the repository was rendered without ``--guided-decoding``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from koserve.errors import InvalidRequestError
from koserve.guided.spec import GuidedDecoding, parse_guided_decoding
from koserve.text.stop_words import parse_word_list

GetTensor = Callable[[str], "np.ndarray | None"]
ENGINE_NAME = "the LLM API engine step"

# Accepted only at their "off" value: beams, several sequences, logits and perf metrics, top-p decay.
UNSUPPORTED_UNLESS = {
    "beam_width": 1,
    "num_return_sequences": 1,
    "return_context_logits": False,
    "return_generation_logits": False,
    "return_perf_metrics": False,
    "return_num_input_tokens": False,
    "return_num_output_tokens": False,
    "runtime_top_p_decay": 1.0,
}
# Refused whenever they hold a value: other model kinds, prompt tuning, LoRA, disaggregation, KV retention,
# speculative and lookahead decoding, a non-empty embedding bias.
UNSUPPORTED_WHEN_GIVEN = (
    "encoder_input_features", "encoder_output_lengths", "cross_attention_mask", "skip_cross_attn_blocks",
    "mrope_rotary_cos_sin", "mrope_position_deltas", "prompt_embedding_table", "lora_task_id", "lora_weights",
    "lora_config", "context_phase_params", "retention_token_range_starts", "retention_token_range_ends",
    "retention_token_range_priorities", "retention_token_range_durations_ms", "retention_decode_priority",
    "retention_decode_duration_ms", "lookahead_window_size", "lookahead_ngram_size", "lookahead_verification_set_size", "draft_input_ids", "embedding_bias",
)
STREAMING_NOT_DECOUPLED = (
    "Streaming is only supported if model is deployed using decoupled mode: streaming=true needs tensorrt_llm "
    "rendered decoupled (this one was rendered with --engine-not-decoupled)"
)
GUIDED_DECODING_OFF = (
    "guided decoding is off in this tensorrt_llm (parameter guided_decoding_backend is empty): render the model "
    "repository with --guided-decoding"
)


@dataclass(frozen=True)
class EngineLimits:
    """What the served model allows (rendered into the config's ``parameters``)."""

    max_input_len: int
    max_seq_len: int
    vocab_size: int | None = None
    default_end_ids: tuple[int, ...] = ()
    exclude_input_in_output: bool = True
    guided_decoding: bool = False  # rendered --guided-decoding (LLM(guided_decoding_backend="xgrammar"))


@dataclass(frozen=True)
class GenerationRequest:
    """One request for the LLM API, in the C++ backend's terms (batch 1, beam width 1).

    ``end_ids``: the first goes to ``SamplingParams.end_id``; all of them end the sequence unemitted.
    ``stop_words``: token sequences, emitted and then ending the sequence (the C++ backend's rule).
    Sampling options are None when the client did not send them (the runtime's defaults then apply).
    """

    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    end_ids: tuple[int, ...]
    pad_id: int | None = None
    stop_words: tuple[tuple[int, ...], ...] = ()
    bad_token_ids: tuple[int, ...] = ()
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_tokens: int | None = None
    streaming: bool = False
    exclude_input_in_output: bool = True
    return_log_probs: bool = False
    request_id: str = ""
    guided: GuidedDecoding | None = None  # SamplingParams.guided_decoding: the output follows this guide


_KIND_CHECK = {
    "int": lambda a: np.issubdtype(a.dtype, np.integer),
    "uint": lambda a: np.issubdtype(a.dtype, np.integer),  # the C++ backend reads seed as uint64; any integer dtype
    "float": lambda a: np.issubdtype(a.dtype, np.floating),
    "bool": lambda a: a.dtype == np.bool_,
}


def scalar(get: GetTensor, name: str, kind: str, default=None):
    """The one value of input ``name`` (any shape holding one element), checking its dtype kind. Also used by the
    CPU stand-in, which reads the same C++-backend inputs."""
    arr = get(name)
    if arr is None:
        return default
    arr = np.asarray(arr)
    if arr.size != 1:
        raise InvalidRequestError(f"{name} must hold exactly one value per request, got shape {list(arr.shape)}")
    if not _KIND_CHECK[kind](arr):
        raise InvalidRequestError(f"{name} has dtype {arr.dtype}; expected {kind}")
    value = arr.reshape(-1)[0].item()
    return bool(value) if kind == "bool" else value


def _prompt(get: GetTensor, limits: EngineLimits) -> tuple[int, ...]:
    ids = get("input_ids")
    if ids is None:
        raise InvalidRequestError("input_ids is required")
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise InvalidRequestError(f"input_ids has dtype {ids.dtype}; expected INT32")
    if ids.ndim == 2:
        if ids.shape[0] != 1:
            raise InvalidRequestError(f"input_ids has batch size {ids.shape[0]}: {ENGINE_NAME} takes one sequence "
                                      f"per request (shape [1, L])")
        ids = ids[0]
    elif ids.ndim != 1:
        raise InvalidRequestError(f"input_ids must have shape [1, L], got {list(ids.shape)}")
    length = scalar(get, "input_lengths", "int", default=len(ids))
    if not 1 <= length <= len(ids):
        raise InvalidRequestError(f"input_lengths is {length} but input_ids holds {len(ids)} tokens")
    prompt = tuple(int(t) for t in ids[:length])
    if limits.vocab_size is not None:
        bad = [t for t in prompt if not 0 <= t < limits.vocab_size]
        if bad:
            raise InvalidRequestError(f"input_ids hold {len(bad)} token id(s) outside the vocabulary "
                                      f"[0, {limits.vocab_size}), e.g. {bad[0]}")
    if length > limits.max_input_len:
        raise InvalidRequestError(f"input length {length} exceeds the engine's max_input_len {limits.max_input_len}")
    return prompt


def _refuse_unsupported(get: GetTensor) -> None:
    for name, allowed in UNSUPPORTED_UNLESS.items():
        kind = "bool" if isinstance(allowed, bool) else "float" if isinstance(allowed, float) else "int"
        value = scalar(get, name, kind)
        if value is not None and value != allowed:
            raise InvalidRequestError(f"{name}={value} is not supported by {ENGINE_NAME} (only {allowed})")
    for name in UNSUPPORTED_WHEN_GIVEN:
        value = get(name)
        if value is not None and np.asarray(value).size > 0:
            raise InvalidRequestError(f"{name} is not supported by {ENGINE_NAME} (leave it out; it holds "
                                      f"{np.asarray(value).size} value(s))")


def one_text(get: GetTensor, name: str) -> str | None:
    """The one UTF-8 string of a BYTES input (None when absent or empty)."""
    arr = get(name)
    if arr is None or np.asarray(arr).size == 0:
        return None
    flat = np.asarray(arr).reshape(-1)
    if flat.size != 1:
        raise InvalidRequestError(f"{name} must hold exactly one string per request, got {flat.size}")
    raw = flat[0]
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"{name} is not valid UTF-8") from None
    return str(raw)


def _guided(get: GetTensor, limits: EngineLimits) -> GuidedDecoding | None:
    guided = parse_guided_decoding(one_text(get, "guided_decoding_guide_type"), one_text(get, "guided_decoding_guide"))
    if guided is not None and not limits.guided_decoding:
        raise InvalidRequestError(GUIDED_DECODING_OFF)
    return guided


def _bad_token_ids(get: GetTensor) -> tuple[int, ...]:
    """``SamplingParams`` takes bad words as single token ids (``bad_token_ids``) or as strings it tokenizes itself
    (``bad``, which needs the tokenizer the engine step skips): a bad word of several tokens cannot be sent."""
    array = get("bad_words_list")
    words = parse_word_list(array, "bad_words_list") if array is not None else []
    long = [w for w in words if len(w) != 1]
    if long:
        raise InvalidRequestError(
            f"bad_words_list holds a word of {len(long[0])} tokens ({long[0]}): {ENGINE_NAME} takes one-token bad "
            f"words only (the LLM API's bad_token_ids)")
    return tuple(w[0] for w in words)


def parse_request(get: GetTensor, limits: EngineLimits, *, request_id: str = "",
                  decoupled: bool = True) -> GenerationRequest:
    """Build a :class:`GenerationRequest` from the input tensors (``get(name)`` → array or None)."""
    streaming = scalar(get, "streaming", "bool", default=False)
    if streaming and not decoupled:
        raise InvalidRequestError(STREAMING_NOT_DECOUPLED)
    prompt = _prompt(get, limits)
    out_len = scalar(get, "request_output_len", "int")
    if out_len is None:
        raise InvalidRequestError("request_output_len is required")
    max_out = limits.max_seq_len - 1
    if out_len <= 0 or out_len > max_out:
        raise InvalidRequestError(
            f"request_output_len must be in [1, {max_out}] (max_seq_len {limits.max_seq_len} - 1), got {out_len}")
    out_len = min(out_len, limits.max_seq_len - len(prompt))
    _refuse_unsupported(get)

    end_id = scalar(get, "end_id", "int")
    if end_id is not None and limits.vocab_size is not None and not -1 <= end_id < limits.vocab_size:
        raise InvalidRequestError(
            f"end_id {end_id} is outside [-1, {limits.vocab_size}) (the vocabulary has {limits.vocab_size} ids)")
    end_ids = (int(end_id),) if end_id is not None else tuple(limits.default_end_ids)
    if not end_ids:
        raise InvalidRequestError("end_id is required (no profile end id was rendered for this model)")
    stop_array = get("stop_words_list")
    stop_words = tuple(tuple(w) for w in parse_word_list(stop_array, "stop_words_list")) if stop_array is not None \
        else ()

    temperature = scalar(get, "temperature", "float")
    top_p = scalar(get, "runtime_top_p", "float")
    top_k = scalar(get, "runtime_top_k", "int")
    for name, value in (("temperature", temperature), ("runtime_top_p", top_p)):
        if value is not None and not np.isfinite(value):
            raise InvalidRequestError(f"{name} must be a finite number, got {value}")
    if temperature is not None and temperature < 0:
        raise InvalidRequestError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise InvalidRequestError(f"runtime_top_k must be >= 0, got {top_k}")
    if top_p is not None and not 0.0 <= top_p <= 1.0:
        raise InvalidRequestError(f"runtime_top_p must be in [0, 1], got {top_p}")
    repetition = scalar(get, "repetition_penalty", "float")
    if repetition is not None and repetition <= 0:
        raise InvalidRequestError(f"repetition_penalty must be > 0, got {repetition}")
    min_tokens = scalar(get, "min_tokens", "int")
    if min_tokens is not None and min_tokens < 0:
        raise InvalidRequestError(f"min_tokens must be >= 0, got {min_tokens}")
    seed = scalar(get, "seed", "int")
    if seed is not None and not 0 <= seed < 2**64:
        raise InvalidRequestError(f"seed must be in [0, 2**64), got {seed}")
    exclude = scalar(get, "exclude_input_in_output", "bool")
    return GenerationRequest(
        prompt_token_ids=prompt,
        max_tokens=int(out_len),
        end_ids=end_ids,
        pad_id=scalar(get, "pad_id", "int"),
        stop_words=stop_words,
        bad_token_ids=_bad_token_ids(get),
        temperature=None if temperature is None else float(temperature),
        top_k=None if top_k is None else int(top_k),
        top_p=None if top_p is None else float(top_p),
        seed=None if seed is None else int(seed),
        repetition_penalty=None if repetition is None else float(repetition),
        presence_penalty=scalar(get, "presence_penalty", "float"),
        frequency_penalty=scalar(get, "frequency_penalty", "float"),
        min_tokens=min_tokens,
        streaming=streaming,
        exclude_input_in_output=limits.exclude_input_in_output if exclude is None else exclude,
        return_log_probs=scalar(get, "return_log_probs", "bool", default=False),
        request_id=request_id,
        guided=_guided(get, limits),
    )
