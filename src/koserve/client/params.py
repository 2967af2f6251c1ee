"""Sampling parameters: the profile's defaults, overridden by what the caller passes, validated client-side.

``resolve_params(profile, overrides)`` returns a :class:`SamplingParams`; a wrong name, type or range raises
:class:`~koserve.errors.InvalidRequestError` naming the parameter and the allowed range before anything is sent.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from koserve.client.errors import InvalidParameterError
from koserve.errors import InvalidRequestError
from koserve.guided.spec import GuidedDecoding, parse_guided_decoding
from koserve.profiles import ModelProfile

MAX_STOP_STRINGS = 32
MAX_STOP_STRING_CHARS = 256
# Limits of the wire types (Triton tensors). Triton's HTTP JSON parser wraps integers into an INT32 tensor
# (max_tokens 4294967300 runs as 4), so every value is checked against its tensor's type before sending.
UINT64_MAX = 2**64 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
FP32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class SamplingParams:
    """What the server is asked to do for one request (after defaults are applied).

    ``temperature == 0`` means greedy decoding (sent as ``top_k = 1``). ``stop`` holds the caller's stop strings;
    the profile's own stop words are always added on top (see :meth:`stop_strings`).
    """

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: tuple[str, ...] = ()
    seed: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    length_penalty: float | None = None
    min_tokens: int | None = None
    bad_words: tuple[str, ...] = ()
    end_id: int | None = None
    pad_id: int | None = None
    guided: GuidedDecoding | None = None  # structured output: response_format= / json_schema=
    profile_stop_words: tuple[str, ...] = field(default=(), repr=False)

    def stop_strings(self) -> tuple[str, ...]:
        """The profile's stop words followed by the caller's, without duplicates."""
        seen: dict[str, None] = {}
        for s in (*self.profile_stop_words, *self.stop):
            seen.setdefault(s, None)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("profile_stop_words")
        d["stop"] = list(self.stop)
        d["bad_words"] = list(self.bad_words)
        d["guided"] = None if self.guided is None else {"guide_type": self.guided.guide_type,
                                                        "guide": self.guided.guide}
        return d


PARAM_NAMES: tuple[str, ...] = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "length_penalty",
    "min_tokens",
    "bad_words",
    "end_id",
    "pad_id",
    "response_format",
    "json_schema",
)


def _guided(overrides: Mapping[str, Any]) -> GuidedDecoding | None:
    """``json_schema=`` (a dict, a JSON string or a pydantic model class) or OpenAI's ``response_format=``."""
    from koserve.guided.openai import guide_from_response_format  # noqa: PLC0415

    schema, response_format = overrides.get("json_schema"), overrides.get("response_format")
    if schema is not None and response_format is not None:
        raise InvalidParameterError("give json_schema or response_format, not both", param="json_schema")
    try:
        if response_format is not None:
            return guide_from_response_format(response_format)
        if schema is None:
            return None
        if hasattr(schema, "model_json_schema"):
            schema = schema.model_json_schema()
        text = schema if isinstance(schema, str) else json.dumps(schema, ensure_ascii=False)
        return parse_guided_decoding("json_schema", text)
    except InvalidRequestError as exc:
        raise InvalidParameterError(str(exc), param="json_schema" if schema is not None else "response_format"
                                    ) from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(name: str, v: Any, lo: int, hi: int = INT32_MAX) -> int:
    """An integer parameter in ``[lo, hi]`` (by default the INT32 range its tensor has)."""
    if not _is_int(v):
        raise InvalidParameterError(f"{name} must be an integer, got {v!r}", param=name)
    if v < lo or v > hi:
        raise InvalidParameterError(f"{name} must be between {lo} and {hi}, got {v}", param=name)
    return int(v)


def _float(name: str, v: Any, lo: float, hi: float = FP32_MAX, *, lo_open: bool = False) -> float:
    """A finite number in ``lo..hi`` (by default up to the largest FP32, its tensor's type)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InvalidParameterError(f"{name} must be a finite number, got {v!r}", param=name)
    bad = v <= lo if lo_open else v < lo
    if bad or v > hi:
        left = f"> {lo}" if lo_open else f">= {lo}"
        top = f"{hi:g} (the largest FP32)" if hi == FP32_MAX else str(hi)
        raise InvalidParameterError(f"{name} must be {left} and <= {top}, got {v}", param=name)
    return float(v)


def _strings(name: str, v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)):
        raise InvalidParameterError(f"{name} must be a string or a list of strings, got {type(v).__name__}",
                                    param=name)
    if len(v) > MAX_STOP_STRINGS:
        raise InvalidParameterError(f"{name} takes at most {MAX_STOP_STRINGS} strings, got {len(v)}", param=name)
    out = []
    for i, s in enumerate(v):
        if not isinstance(s, str):
            raise InvalidParameterError(f"{name}[{i}] must be a string, got {type(s).__name__}", param=name)
        if not s:
            raise InvalidParameterError(f"{name}[{i}] must not be empty", param=name)
        if len(s) > MAX_STOP_STRING_CHARS:
            raise InvalidParameterError(
                f"{name}[{i}] is {len(s)} characters long; the limit is {MAX_STOP_STRING_CHARS}", param=name)
        out.append(s)
    return tuple(out)


def resolve_params(profile: ModelProfile, overrides: Mapping[str, Any] | None = None) -> SamplingParams:
    """Profile defaults + ``overrides`` (``None`` values mean "use the default"), validated."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(overrides) - set(PARAM_NAMES))
    if unknown:
        raise InvalidRequestError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(PARAM_NAMES)}"
        )
    gen = profile.generation
    limit = profile.architecture.max_position_embeddings
    vocab = profile.architecture.vocab_size

    def get(name: str, default: Any) -> Any:
        return overrides.get(name, default)

    def opt_float(name: str, lo: float, hi: float = FP32_MAX, *, lo_open: bool = False) -> float | None:
        v = overrides.get(name)
        return None if v is None else _float(name, v, lo, hi, lo_open=lo_open)

    min_tokens = overrides.get("min_tokens")
    seed = overrides.get("seed")
    end_id = overrides.get("end_id")
    pad_id = overrides.get("pad_id")
    params = SamplingParams(
        max_tokens=_int("max_tokens", get("max_tokens", gen.max_new_tokens), 1, limit),
        temperature=_float("temperature", get("temperature", gen.temperature), 0.0, 100.0),
        top_p=_float("top_p", get("top_p", gen.top_p), 0.0, 1.0, lo_open=True),
        top_k=_int("top_k", get("top_k", gen.top_k), 0, vocab),
        stop=_strings("stop", overrides.get("stop")),
        seed=None if seed is None else _int("seed", seed, 0, UINT64_MAX),
        repetition_penalty=opt_float("repetition_penalty", 0.0, lo_open=True),
        presence_penalty=opt_float("presence_penalty", -2.0, 2.0),
        frequency_penalty=opt_float("frequency_penalty", -2.0, 2.0),
        length_penalty=opt_float("length_penalty", 0.0),
        min_tokens=None if min_tokens is None else _int("min_tokens", min_tokens, 0, limit),
        bad_words=_strings("bad_words", overrides.get("bad_words")),
        end_id=profile.end_id if end_id is None else _int("end_id", end_id, 0, vocab - 1),
        pad_id=gen.pad_id if pad_id is None else _int("pad_id", pad_id, 0, vocab - 1),
        profile_stop_words=tuple(gen.stop_words),
        guided=_guided(overrides),
    )
    if params.min_tokens is not None and params.min_tokens > params.max_tokens:
        raise InvalidParameterError(
            f"min_tokens ({params.min_tokens}) must not exceed max_tokens ({params.max_tokens})", param="min_tokens"
        )
    return params
