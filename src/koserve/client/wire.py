"""The request as Triton tensors (DEVELOPERS.md, tensor contract; compatible with tensorrtllm_backend's ``ensemble``).

``build_request`` turns a prompt and :class:`SamplingParams` into named tensors; the transports encode them as
gRPC ``InferInput`` objects or as the JSON body of HTTP ``generate`` / ``generate_stream``. Only inputs the target
model declares are sent (looked up once per model); a parameter the caller set explicitly whose input the model
lacks is an error rather than silently ignored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from koserve.client.errors import InvalidParameterError
from koserve.client.params import FP32_MAX, INT32_MAX, INT32_MIN, UINT64_MAX, SamplingParams
from koserve.errors import InvalidRequestError

_NP = {"BYTES": np.object_, "INT32": np.int32, "FP32": np.float32, "UINT64": np.uint64, "BOOL": np.bool_}

_WORD_LISTS = ("stop_words", "bad_words")

# caller-facing parameter name -> tensor name, for error messages
PARAM_TENSORS = {
    "seed": "random_seed",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "length_penalty": "length_penalty",
    "min_tokens": "min_length",
    "bad_words": "bad_words",
    "json_schema": "guided_decoding_guide_type",
    "response_format": "guided_decoding_guide_type",
}


_RANGES = {"INT32": (INT32_MIN, INT32_MAX), "UINT64": (0, UINT64_MAX), "FP32": (-FP32_MAX, FP32_MAX)}


def check_wire_range(name: str, datatype: str, value: Any, param: str | None = None) -> None:
    """Refuse a value its tensor type cannot hold (Triton's HTTP JSON parser would wrap it silently)."""
    bounds = _RANGES.get(datatype)
    if bounds is None or isinstance(value, bool):
        return
    lo, hi = bounds
    if not lo <= value <= hi:  # NaN fails this too
        what = param or name
        shown = (lambda x: f"{x:g}") if datatype == "FP32" else str
        raise InvalidParameterError(
            f"{what} is {value}, outside the range of its {datatype} tensor {name!r} ({shown(lo)} to {shown(hi)})",
            param=what,
        )


@dataclass(frozen=True)
class WireTensor:
    name: str
    datatype: str  # Triton datatype: BYTES, INT32, FP32, UINT64, BOOL
    values: tuple[Any, ...]

    def as_numpy(self, batch: bool) -> np.ndarray:
        if self.datatype == "BYTES":
            arr = np.array([v.encode("utf-8") if isinstance(v, str) else v for v in self.values], dtype=np.object_)
        else:
            arr = np.array(self.values, dtype=_NP[self.datatype])
        return arr.reshape(1, -1) if batch else arr

    def as_json(self) -> Any:
        if self.name in _WORD_LISTS or len(self.values) != 1:
            return list(self.values)
        return self.values[0]


@dataclass
class WireRequest:
    """One generation request: tensors by name plus the request id the server keys its state by."""

    tensors: dict[str, WireTensor]
    request_id: str
    stream: bool
    explicit: dict[str, str] = field(default_factory=dict)  # tensor name -> caller's parameter name

    def for_model(self, model: str, declared: set[str] | None) -> list[WireTensor]:
        """The tensors to send to ``model`` (those it declares; all when unknown)."""
        if declared is None:
            return list(self.tensors.values())
        for tensor, param in self.explicit.items():
            if tensor not in declared:
                raise InvalidRequestError(
                    f"parameter {param!r} is not supported by model {model!r} (it has no {tensor!r} input)"
                )
        for required in ("text_input", "max_tokens"):
            if required not in declared:
                raise InvalidRequestError(
                    f"model {model!r} has no {required!r} input: it is not a koserve/TensorRT-LLM text model "
                    "(use 'ensemble' or 'tensorrt_llm_bls')"
                )
        return [t for name, t in self.tensors.items() if name in declared]

    def json_body(self, tensors: list[WireTensor]) -> dict[str, Any]:
        body: dict[str, Any] = {t.name: t.as_json() for t in tensors}
        body["id"] = self.request_id
        return body


def new_request_id() -> str:
    return f"ks-{uuid.uuid4().hex}"


def build_request(prompt: str, params: SamplingParams, *, stream: bool, request_id: str | None = None,
                  explicit: set[str] | frozenset[str] = frozenset()) -> WireRequest:
    """Tensors for ``prompt`` with ``params``. ``explicit``: the parameter names the caller set themselves."""
    if not isinstance(prompt, str):
        raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt:
        raise InvalidRequestError("prompt must not be empty")
    if request_id is not None and (not isinstance(request_id, str) or not request_id):
        raise InvalidRequestError("request_id must be a non-empty string")
    t: dict[str, WireTensor] = {}
    param_of = {tensor: param for param, tensor in PARAM_TENSORS.items()}

    def put(name: str, datatype: str, *values: Any) -> None:
        for v in values:
            check_wire_range(name, datatype, v, param_of.get(name, name))
        t[name] = WireTensor(name, datatype, tuple(values))

    put("text_input", "BYTES", prompt)
    put("max_tokens", "INT32", params.max_tokens)
    put("stream", "BOOL", stream)
    put("exclude_input_in_output", "BOOL", True)
    if params.end_id is not None:
        put("end_id", "INT32", params.end_id)
    if params.pad_id is not None:
        put("pad_id", "INT32", params.pad_id)
    if params.temperature == 0.0:  # greedy
        put("top_k", "INT32", 1)
        put("top_p", "FP32", 1.0)
        put("temperature", "FP32", 1.0)
    else:
        put("top_k", "INT32", params.top_k)
        put("top_p", "FP32", params.top_p)
        put("temperature", "FP32", params.temperature)
    stops = params.stop_strings()
    if stops:
        put("stop_words", "BYTES", *stops)
    if params.bad_words:
        put("bad_words", "BYTES", *params.bad_words)
    if params.seed is not None:
        put("random_seed", "UINT64", params.seed)
    for name in ("repetition_penalty", "presence_penalty", "frequency_penalty", "length_penalty"):
        value = getattr(params, name)
        if value is not None:
            put(name, "FP32", value)
    if params.min_tokens is not None:
        put("min_length", "INT32", params.min_tokens)
    if params.guided is not None:  # NVIDIA's guided-decoding inputs (TensorRT-LLM 1.2.1)
        put("guided_decoding_guide_type", "BYTES", params.guided.guide_type)
        if params.guided.guide:
            put("guided_decoding_guide", "BYTES", params.guided.guide)
    explicit_tensors = {PARAM_TENSORS[p]: p for p in explicit if p in PARAM_TENSORS}
    return WireRequest(t, request_id or new_request_id(), stream, explicit_tensors)


def engine_stop_request(request_id: str) -> WireRequest:
    """A TensorRT-LLM ``stop`` request for ``request_id``, sent to the engine model (``tensorrt_llm``).

    A cancelled ensemble request does not reach the engine inside Triton (Triton cancels the ensemble, not its
    steps), but the engine sees the client's request id, so the client stops it directly, as the BLS model does.
    """
    t = {
        "input_ids": WireTensor("input_ids", "INT32", (0,)),
        "input_lengths": WireTensor("input_lengths", "INT32", (1,)),
        "request_output_len": WireTensor("request_output_len", "INT32", (1,)),
        "stop": WireTensor("stop", "BOOL", (True,)),
    }
    return WireRequest(t, request_id, stream=True)
