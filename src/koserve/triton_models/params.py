"""Parse and validate the inputs of ``ensemble`` / ``tensorrt_llm_bls`` / ``preprocessing`` requests.

Inputs arrive as numpy arrays keyed by tensor name (Triton gives them a leading batch dimension). Every error is an
:class:`~koserve.errors.InvalidRequestError` that names the input, the value and the limit; the server keeps serving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from koserve.errors import InvalidRequestError
from koserve.guided.spec import GuidedDecoding, parse_guided_decoding

MAX_STOP_WORDS = 32
MAX_STOP_WORD_BYTES = 256


@dataclass(frozen=True)
class ServingLimits:
    """The engine's limits (from its config.json on GPU, from the render options on CPU)."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int

    @property
    def max_output_len(self) -> int:
        return self.max_seq_len - 1


@dataclass(frozen=True)
class SamplingParams:
    """Engine-side sampling options as given (None = not given: the engine's default applies)."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    length_penalty: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_length: int | None = None
    beam_width: int | None = None
    random_seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One parsed ``ensemble``/``tensorrt_llm_bls`` request (batch size 1)."""

    text: str
    max_tokens: int
    stop_words: tuple[str, ...] = ()
    bad_words: tuple[str, ...] = ()
    end_id: int | None = None
    pad_id: int | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    exclude_input_in_output: bool = True
    return_log_probs: bool = False
    return_num_input_tokens: bool = False  # TensorRT-LLM 1.x: num_input_tokens / num_output_tokens outputs
    return_num_output_tokens: bool = False
    input_tokens: int = 0  # the prompt's token count, once tokenized (the BLS's num_input_tokens)
    guided: GuidedDecoding | None = None  # guided_decoding_guide_type / guided_decoding_guide, validated


def check_batch_one(inputs: Mapping[str, np.ndarray]) -> None:
    """koserve serves one prompt per request: a batch dimension larger than 1 is refused by name."""
    for name, arr in inputs.items():
        if arr is not None and arr.ndim >= 1 and arr.shape[0] != 1:
            raise InvalidRequestError(
                f"input {name!r} has batch size {arr.shape[0]}; koserve accepts batch size 1 (one prompt per "
                f"request: send several requests concurrently instead)"
            )


def scalar(arr: np.ndarray | None, name: str, kind: str) -> Any:
    """The single value of a ``[1]`` / ``[1, 1]`` input, type-checked."""
    if arr is None:
        return None
    flat = np.asarray(arr).reshape(-1)
    if flat.size != 1:
        raise InvalidRequestError(
            f"input {name!r} must hold exactly one value (shape [1] or [1, 1]), got shape {list(np.shape(arr))}"
        )
    value = flat[0]
    dtype = flat.dtype
    if kind == "bool":
        if dtype != np.bool_:
            raise InvalidRequestError(f"input {name!r} must be BOOL, got {dtype}")
        return bool(value)
    if kind in ("int", "uint"):
        if not np.issubdtype(dtype, np.integer):
            raise InvalidRequestError(f"input {name!r} must be an integer tensor, got {dtype}")
        return int(value)
    if kind == "float":
        if not np.issubdtype(dtype, np.floating):
            raise InvalidRequestError(f"input {name!r} must be a float tensor, got {dtype}")
        value = float(value)
        if not np.isfinite(value):
            raise InvalidRequestError(f"input {name!r} must be finite, got {value}")
        return value
    raise AssertionError(kind)


def decode_utf8(raw: Any, name: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, np.bytes_)):
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(
                f"input {name!r} is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}"
            ) from None
    raise InvalidRequestError(f"input {name!r} must be BYTES (UTF-8 text), got {type(raw).__name__}")


def text_value(arr: np.ndarray | None, name: str) -> str:
    if arr is None:
        raise InvalidRequestError(f"input {name!r} is required")
    if arr.dtype != np.object_ and arr.dtype.kind not in ("S", "U"):
        raise InvalidRequestError(f"input {name!r} must be BYTES (UTF-8 text), got {arr.dtype}")
    flat = arr.reshape(-1)
    if flat.size != 1:
        raise InvalidRequestError(
            f"input {name!r} must hold exactly one prompt (shape [1] or [1, 1]), got shape {list(arr.shape)}"
        )
    return decode_utf8(flat[0], name)


def word_values(arr: np.ndarray | None, name: str) -> tuple[str, ...]:
    """Stop/bad words: a BYTES tensor of words (empty-string entries are padding from batched clients)."""
    if arr is None:
        return ()
    if arr.dtype != np.object_ and arr.dtype.kind not in ("S", "U"):
        raise InvalidRequestError(f"input {name!r} must be BYTES (one word per element), got {arr.dtype}")
    words = []
    for i, raw in enumerate(arr.reshape(-1)):
        word = decode_utf8(raw, f"{name}[{i}]")
        if word == "":
            continue
        if len(word.encode("utf-8")) > MAX_STOP_WORD_BYTES:
            raise InvalidRequestError(
                f"{name}[{i}] is {len(word.encode('utf-8'))} bytes long; the limit is {MAX_STOP_WORD_BYTES}"
            )
        if word.strip() == "":
            raise InvalidRequestError(f"{name}[{i}] is only whitespace ({word!r}): not a usable word")
        words.append(word)
    if len(words) > MAX_STOP_WORDS:
        raise InvalidRequestError(f"{name} has {len(words)} entries; the limit is {MAX_STOP_WORDS}")
    return tuple(dict.fromkeys(words))


def validate_sampling(s: SamplingParams) -> None:
    if s.temperature is not None and s.temperature < 0:
        raise InvalidRequestError(f"temperature must be >= 0, got {s.temperature}")
    if s.top_p is not None and not 0.0 < s.top_p <= 1.0:
        raise InvalidRequestError(f"top_p must be in (0, 1], got {s.top_p}")
    if s.top_k is not None and s.top_k < 0:
        raise InvalidRequestError(f"top_k must be >= 0, got {s.top_k}")
    if s.repetition_penalty is not None and s.repetition_penalty <= 0:
        raise InvalidRequestError(f"repetition_penalty must be > 0, got {s.repetition_penalty}")
    if s.min_length is not None and s.min_length < 0:
        raise InvalidRequestError(f"min_length must be >= 0, got {s.min_length}")
    if s.beam_width is not None and s.beam_width != 1:
        raise InvalidRequestError(f"beam_width must be 1 (koserve serves greedy/sampling only), got {s.beam_width}")
    if s.random_seed is not None and not 0 <= s.random_seed < SEED_LIMIT:
        raise InvalidRequestError(f"random_seed must be in [0, 2**64), got {s.random_seed}")


def validate_token_id(value: int | None, name: str, vocab_size: int) -> None:
    if value is not None and not 0 <= value < vocab_size:
        raise InvalidRequestError(f"{name} {value} is outside the vocabulary [0, {vocab_size})")


def validate_lengths(input_len: int, max_tokens: int, limits: ServingLimits) -> None:
    """Prompt and output lengths against the engine's limits (the error names both numbers)."""
    if input_len > limits.max_input_len:
        raise InvalidRequestError(
            f"prompt is {input_len} tokens long; the engine's max input length is {limits.max_input_len}"
        )
    if max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be >= 1, got {max_tokens}")
    if input_len + max_tokens > limits.max_seq_len:
        raise InvalidRequestError(
            f"prompt ({input_len} tokens) + max_tokens ({max_tokens}) = {input_len + max_tokens} exceeds the "
            f"engine's max sequence length {limits.max_seq_len} (max_tokens <= {limits.max_seq_len - input_len} "
            f"for this prompt)"
        )


def sampling_from(inputs: Mapping[str, np.ndarray | None], names: Mapping[str, str] | None = None) -> SamplingParams:
    """Read sampling inputs; ``names`` maps our field names to the tensor names used (default: the same); errors
    name the field."""
    names = names or {}

    def get(field_name: str, kind: str):
        return scalar(inputs.get(names.get(field_name, field_name)), field_name, kind)

    def get_aliased(field_name: str, alias: str, kind: str):
        value = get(field_name, kind)
        other = get(alias, kind)
        if value is not None and other is not None and value != other:
            raise InvalidRequestError(
                f"inputs {field_name!r} ({value}) and {alias!r} ({other}) name the same option: give one")
        return other if value is None else value

    params = SamplingParams(
        temperature=get("temperature", "float"),
        top_k=get("top_k", "int"),
        top_p=get("top_p", "float"),
        length_penalty=get("length_penalty", "float"),
        repetition_penalty=get("repetition_penalty", "float"),
        presence_penalty=get("presence_penalty", "float"),
        frequency_penalty=get("frequency_penalty", "float"),
        min_length=get_aliased("min_length", "min_tokens", "int"),
        beam_width=get("beam_width", "int"),
        random_seed=get_aliased("random_seed", "seed", "uint"),
    )
    validate_sampling(params)
    return params


# NVIDIA's ensemble/BLS inputs (v0.19 and the 1.2.1 triton_backend templates) that koserve accepts only at their
# "off" value: None = must be absent (or empty), else the one value allowed. A request that asks for more gets a
# clear INVALID_ARG instead of being silently ignored.
UNSUPPORTED_INPUTS: dict[str, object] = {
    "decoder_text_input": None,  # encoder-decoder models
    "num_return_sequences": 1,
    "return_context_logits": False,
    "return_generation_logits": False,
    "return_perf_metrics": False,
    "prompt_embedding_table": None,
    "prompt_table_extra_id": None,
    "prompt_vocab_size": None,
    "embedding_bias_words": None,
    "embedding_bias_weights": None,
    "lora_task_id": None,
    "lora_weights": None,
    "lora_config": None,
    # tensorrt_llm_bls only
    "image_input": None,
    "image_bytes_input": None,
    "image_url_input": None,
    "video_bytes_input": None,
    "num_draft_tokens": 0,
    "use_draft_logits": False,
}
# TensorRT-LLM 1.x client-facing names (1.2.1 templates) → the v0.19 names koserve keeps as its own
INPUT_ALIASES = {"min_tokens": "min_length", "seed": "random_seed"}
SEED_LIMIT = 2**64


# every input of ``ensemble`` / ``tensorrt_llm_bls`` that koserve reads (NVIDIA's names)
GENERATION_INPUTS = (
    "text_input", "max_tokens", "bad_words", "stop_words", "end_id", "pad_id", "top_k", "top_p", "temperature",
    "length_penalty", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_length", "min_tokens",
    "beam_width", "random_seed", "seed", "stream", "exclude_input_in_output", "return_log_probs",
    "return_num_input_tokens", "return_num_output_tokens", "guided_decoding_guide_type", "guided_decoding_guide",
    *UNSUPPORTED_INPUTS,
)


def check_unsupported(inputs: Mapping[str, np.ndarray | None], names: Mapping[str, str] | None = None) -> None:
    """Refuse NVIDIA inputs koserve does not implement, by name (``names`` maps our names to the tensor names used,
    e.g. ``PROMPT_VOCAB_SIZE`` in preprocessing)."""
    names = names or {}
    for name, allowed in UNSUPPORTED_INPUTS.items():
        arr = inputs.get(names.get(name, name))
        if arr is None or np.asarray(arr).size == 0:
            continue
        if allowed is None:
            flat = np.asarray(arr).reshape(-1)
            if flat.dtype == np.object_ and all(x in (b"", "") for x in flat):
                continue  # batched clients pad with empty strings
            raise InvalidRequestError(
                f"input {name!r} is not supported by koserve (decoder-only text models, no LoRA, prompt tables, "
                f"embedding bias or images): leave it out"
            )
        kind = "bool" if isinstance(allowed, bool) else "int"
        value = scalar(arr, name, kind)
        if value != allowed:
            raise InvalidRequestError(f"input {name!r} = {value} is not supported by koserve (only {allowed})")


# Where each request field is read from: the ensemble and the BLS take NVIDIA's client-facing names as they are;
# ``preprocessing`` gets them under the names NVIDIA's ensemble maps them to (its v0.19 / 1.2.1 templates).
ENSEMBLE_TENSORS: dict[str, str] = {}
PREPROCESSING_TENSORS: dict[str, str] = {
    "text_input": "QUERY", "max_tokens": "REQUEST_OUTPUT_LEN", "bad_words": "BAD_WORDS_DICT",
    "stop_words": "STOP_WORDS_DICT", "end_id": "END_ID", "pad_id": "PAD_ID", "stream": "STREAM",
    "exclude_input_in_output": "EXCLUDE_INPUT_IN_OUTPUT", "return_num_input_tokens": "RETURN_NUM_INPUT_TOKENS",
    "return_num_output_tokens": "RETURN_NUM_OUTPUT_TOKENS",
    # sampling options preprocessing validates before the engine
    "temperature": "TEMPERATURE", "top_k": "RUNTIME_TOP_K", "top_p": "RUNTIME_TOP_P", "length_penalty": "LEN_PENALTY",
    "repetition_penalty": "REPETITION_PENALTY", "presence_penalty": "PRESENCE_PENALTY",
    "frequency_penalty": "FREQUENCY_PENALTY", "min_length": "MIN_LENGTH", "min_tokens": "MIN_TOKENS",
    "beam_width": "BEAM_WIDTH", "random_seed": "RANDOM_SEED", "seed": "SEED",
    # NVIDIA inputs koserve refuses unless off (UNSUPPORTED_INPUTS)
    "decoder_text_input": "DECODER_QUERY", "num_return_sequences": "NUM_RETURN_SEQUENCES",
    "return_context_logits": "RETURN_CONTEXT_LOGITS", "return_generation_logits": "RETURN_GENERATION_LOGITS",
    "return_perf_metrics": "RETURN_PERF_METRICS", "prompt_embedding_table": "PROMPT_EMBEDDING_TABLE",
    "prompt_table_extra_id": "PROMPT_TABLE_EXTRA_ID", "prompt_vocab_size": "PROMPT_VOCAB_SIZE",
    "embedding_bias_words": "EMBEDDING_BIAS_WORDS", "embedding_bias_weights": "EMBEDDING_BIAS_WEIGHTS",
    "lora_task_id": "LORA_TASK_ID", "lora_weights": "LORA_WEIGHTS", "lora_config": "LORA_CONFIG",
    "guided_decoding_guide_type": "GUIDED_DECODING_GUIDE_TYPE", "guided_decoding_guide": "GUIDED_DECODING_GUIDE",
    "image_input": "IMAGE_INPUT", "image_bytes_input": "IMAGE_BYTES", "image_url_input": "IMAGE_URL",
    "video_bytes_input": "VIDEO_BYTES",
}


def parse_generation_request(inputs: Mapping[str, np.ndarray | None],
                             names: Mapping[str, str] = ENSEMBLE_TENSORS) -> GenerationRequest:
    """Parse one request (batch size 1). ``names`` maps each field (NVIDIA's client-facing input name) to the
    tensor that carries it (default: the same name; :data:`PREPROCESSING_TENSORS` for ``preprocessing``). Errors
    name the client-facing input."""

    def get(name: str):
        return inputs.get(names.get(name, name))

    present = {k: v for k, v in inputs.items() if v is not None}
    check_batch_one(present)
    check_unsupported(inputs, names)
    text = text_value(get("text_input"), "text_input")
    if not text.strip():
        raise InvalidRequestError("text_input is empty: send a non-empty prompt")
    max_tokens = scalar(get("max_tokens"), "max_tokens", "int")
    if max_tokens is None:
        raise InvalidRequestError("input 'max_tokens' is required")
    if max_tokens <= 0:
        raise InvalidRequestError(f"max_tokens must be >= 1, got {max_tokens}")

    def optional_text(name: str) -> str | None:
        arr = get(name)
        if arr is None or np.asarray(arr).size == 0:
            return None
        return text_value(arr, name)

    def flag(name: str, default: bool) -> bool:
        value = scalar(get(name), name, "bool")
        return default if value is None else value

    return GenerationRequest(
        text=text,
        max_tokens=max_tokens,
        stop_words=word_values(get("stop_words"), "stop_words"),
        bad_words=word_values(get("bad_words"), "bad_words"),
        end_id=scalar(get("end_id"), "end_id", "int"),
        pad_id=scalar(get("pad_id"), "pad_id", "int"),
        sampling=sampling_from(inputs, names),
        stream=flag("stream", False),
        exclude_input_in_output=flag("exclude_input_in_output", True),
        return_log_probs=flag("return_log_probs", False),
        return_num_input_tokens=flag("return_num_input_tokens", False),
        return_num_output_tokens=flag("return_num_output_tokens", False),
        guided=parse_guided_decoding(optional_text("guided_decoding_guide_type"),
                                     optional_text("guided_decoding_guide")),
    )
