"""How the ``tensorrt_llm_bls`` model calls the engine model (``tensorrt_llm``) of its own server.

The clients take a request (tensors, requested outputs, an id unique among the requests in flight) and a handler,
and call ``handler.on_chunk(EngineChunk)`` for every engine response (the last one has ``final``) or
``handler.on_error(message, invalid)`` once, from their own threads. ``stop(request_id)`` sends TensorRT-LLM's
``stop`` request for a request in flight.

- :class:`~koserve.triton_models.engine_h2.H2EngineClient` (default): ONE ``ModelStreamInfer`` stream over the server's
  own gRPC endpoint on loopback carries every request of the model; one reader thread owns the connection and routes
  the responses by request id (:func:`route_response`) — Triton puts the id on every response of a stream, errors
  included. ``stop`` goes on a stream of its own so that its answer never reaches the shared one.
- :class:`PbEngineClient`: Triton's python-backend BLS (``exec(decoupled=True)``), a thread per request blocking on
  the response iterator. For servers without a gRPC endpoint; measured unstable under 64-stream load on Triton 2.51
  (the stub aborted with ``malloc(): unaligned ... chunk``).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from koserve.errors import KoserveError
from koserve.triton_models.postprocess import tokens_of

log = logging.getLogger("koserve")


class EngineError(KoserveError):
    """The engine answered a request with an error (its message is passed on to the client)."""

    def __init__(self, message: str, invalid: bool = False):
        super().__init__(message)
        self.invalid = invalid


@dataclass(slots=True)
class EngineChunk:
    """One engine response: its new token ids (+ log probs), and whether it was the engine's last."""

    ids: np.ndarray
    log_probs: np.ndarray | None = None
    cum_log_prob: np.ndarray | None = None
    final: bool = False


class EngineHandler(Protocol):
    def on_chunk(self, chunk: EngineChunk) -> None: ...

    def on_error(self, message: str, invalid: bool) -> None: ...


def looks_invalid(message: str) -> bool:
    """Whether an engine error message is about the request (INVALID_ARG) rather than the server."""
    return "must" in message or "exceeds" in message or "outside" in message or "invalid" in message.lower()


def stop_tensors() -> dict[str, np.ndarray]:
    """The tensors of a TensorRT-LLM ``stop`` request (the request id says which request to stop)."""
    return {
        "input_ids": np.zeros((1, 1), dtype=np.int32),
        "input_lengths": np.ones((1, 1), dtype=np.int32),
        "request_output_len": np.ones((1, 1), dtype=np.int32),
        "stop": np.array([[True]], dtype=np.bool_),
    }


# -- where the server's gRPC endpoint is ---------------------------------------------------------------------------
def grpc_url_from_cmdline(argv: list[str]) -> str | None:
    """``host:port`` of the gRPC endpoint a tritonserver command line sets up (None: gRPC off or not found)."""
    host, port, allowed = "127.0.0.1", "8001", True
    args = iter(argv)
    for arg in args:
        if "=" in arg:
            key, value = arg.split("=", 1)
        else:
            key, value = arg, None
            if key in ("--grpc-port", "--grpc-address", "--allow-grpc"):
                value = next(args, None)
        if value is None:
            continue
        if key == "--grpc-port":
            port = value
        elif key == "--grpc-address":
            host = value
        elif key == "--allow-grpc":
            allowed = value.lower() not in ("false", "0", "no")
    if not allowed or not re.fullmatch(r"\d+", port):
        return None
    if host in ("0.0.0.0", "", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def own_grpc_url(explicit: str = "") -> str | None:
    """The gRPC endpoint of the tritonserver this stub belongs to (its parent process)."""
    if explicit:
        return explicit
    env = os.environ.get("KOSERVE_BLS_GRPC_URL", "")
    if env:
        return env
    try:
        raw = open(f"/proc/{os.getppid()}/cmdline", "rb").read()  # noqa: SIM115
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not argv or "tritonserver" not in os.path.basename(argv[0]):
        return None
    return grpc_url_from_cmdline(argv[1:])


# -- gRPC ---------------------------------------------------------------------------------------------------------
_NP_DTYPES = {
    "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64, "FP16": np.float16,
    "BOOL": np.bool_, "UINT64": np.uint64, "UINT32": np.uint32, "INT8": np.int8, "UINT8": np.uint8,
}


def request_proto(model: str, tensors: dict[str, np.ndarray], outputs: list[str], request_id: str):
    """A ``ModelInferRequest`` (tritonclient's protobufs) with raw input contents."""
    from tritonclient.grpc import service_pb2  # noqa: PLC0415
    from tritonclient.utils import np_to_triton_dtype  # noqa: PLC0415

    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, arr in tensors.items():
        t = req.inputs.add()
        t.name, t.datatype = name, np_to_triton_dtype(arr.dtype)
        t.shape.extend(arr.shape)
        req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    for name in outputs:
        req.outputs.add().name = name
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def chunk_from_proto(response, final: bool) -> EngineChunk:
    """An :class:`EngineChunk` from a ``ModelInferResponse`` (one pass over its outputs, raw contents)."""
    return _chunk_of_response(response, response.outputs, final)


def _chunk_of_response(response, outputs, final: bool) -> EngineChunk:
    raw = response.raw_output_contents
    fast = _streamed_ids(outputs, raw)
    if fast is not None:
        return EngineChunk(fast, None, None, final)
    arrays = {}
    for index, output in enumerate(outputs):
        dtype = _NP_DTYPES.get(output.datatype)
        if dtype is None or index >= len(raw):  # anything unusual: tritonclient's general decoder
            from tritonclient.grpc import InferResult  # noqa: PLC0415

            arrays[output.name] = InferResult(response).as_numpy(output.name)
        else:
            arrays[output.name] = np.frombuffer(raw[index], dtype=dtype).reshape(tuple(output.shape))
    return chunk_of(arrays.get, final)


_INT32 = np.dtype(np.int32)  # (a dtype object: np.frombuffer converts the type np.int32 on every call, ≈ 0.1 µs)
_FIRST_INT32 = struct.Struct("<i").unpack_from  # the first int32 of raw contents (little-endian, as Triton's)
_ONE_TOKEN: list | None = None  # [output_ids, sequence_length] metadata of a one-token streamed response


def _one_token_outputs() -> list:
    """The output metadata of a streamed response with one new token: ``output_ids`` INT32 ``[1, 1, 1]`` and
    ``sequence_length`` INT32 ``[1, 1]`` (no parameters) — what TensorRT-LLM and the CPU stand-in send per token."""
    global _ONE_TOKEN  # noqa: PLW0603
    if _ONE_TOKEN is None:
        from tritonclient.grpc import service_pb2  # noqa: PLC0415

        tensor = service_pb2.ModelInferResponse.InferOutputTensor
        _ONE_TOKEN = [tensor(name="output_ids", datatype="INT32", shape=[1, 1, 1]),
                      tensor(name="sequence_length", datatype="INT32", shape=[1, 1])]
    return _ONE_TOKEN


def _streamed_ids(outputs, raw) -> np.ndarray | None:
    """The common streamed response — exactly ``output_ids`` and ``sequence_length``, both INT32 — decoded without
    the general path's arrays and reshapes (the same ids as :func:`tokens_of`); None for anything else."""
    if len(outputs) != 2 or len(raw) != 2:
        return None
    if outputs == (_ONE_TOKEN or _one_token_outputs()):  # one comparison in C instead of seven field reads
        ids_at, seq_at, width = 0, 1, 1
    else:
        first, second = outputs
        if first.name == "output_ids":
            ids_at, seq_at, ids_out, seq_out = 0, 1, first, second
        else:
            ids_at, seq_at, ids_out, seq_out = 1, 0, second, first
        if ids_out.name != "output_ids" or seq_out.name != "sequence_length" or ids_out.datatype != "INT32" \
                or seq_out.datatype != "INT32" or not ids_out.shape:
            return None
        width = ids_out.shape[-1]
    seq = raw[seq_at]
    if len(seq) < 4:
        return None
    ids = np.frombuffer(raw[ids_at], _INT32)
    size = ids.size
    if size < width:
        return None
    n = _FIRST_INT32(seq)[0]  # the first item's (beam 0's) length
    if 0 <= n < width:
        return ids[:n]
    return ids if size == width else ids[:width]  # beam 0 of item 0, cut at its length


def chunk_of(get, final: bool) -> EngineChunk:
    """An :class:`EngineChunk` from an output getter (``name -> array or None``)."""
    lps, cum = get("output_log_probs"), get("cum_log_probs")
    return EngineChunk(
        ids=tokens_of(get("output_ids"), get("sequence_length")),
        log_probs=None if lps is None else np.asarray(lps, np.float32).ravel(),
        cum_log_prob=None if cum is None else np.asarray(cum, np.float32).ravel(),
        final=final,
    )


_EMPTY_IDS = np.zeros((0,), dtype=np.int32)


def route_response(message, routes: dict[str, EngineHandler]) -> None:
    """Hand one ``ModelStreamInferResponse`` to the handler of its request id (and forget the id on its last one)."""
    response = message.infer_response
    request_id = response.id
    handler = routes.get(request_id)
    if handler is None:
        return  # a request already answered (e.g. its client went away): drop the rest
    error = message.error_message
    if error:
        del routes[request_id]
        call_handler(handler.on_error, error, looks_invalid(error))
        return
    final_param = response.parameters.get("triton_final_response")
    final = final_param is not None and final_param.bool_param
    if final:
        del routes[request_id]
    outputs = response.outputs
    if outputs:
        chunk = _chunk_of_response(response, outputs, final)
    elif final:
        chunk = EngineChunk(_EMPTY_IDS, final=True)
    else:
        return
    try:  # (call_handler's work inline: this runs once per engine response)
        handler.on_chunk(chunk)
    except Exception:  # noqa: BLE001 - one request's handler must not stop the reader
        log.exception(HANDLER_FAILED)


HANDLER_FAILED = "tensorrt_llm_bls: handling an engine response failed"


def call_handler(fn, *args) -> None:
    """Call a handler; log (never raise) what it raises: one request's handler must not stop a reader."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - one request's handler must not stop the reader
        log.exception(HANDLER_FAILED)


# -- python-backend BLS --------------------------------------------------------------------------------------------
class PbEngineClient:
    """The engine through python-backend BLS (``exec(decoupled=True)``), one pool thread per request in flight."""

    def __init__(self, pb, model: str, max_threads: int):
        self.pb, self.model = pb, model
        self.pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="bls")
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()

    def in_flight(self, request_id: str) -> bool:
        return request_id in self._in_flight

    def _request(self, tensors, outputs, request_id):
        pb = self.pb
        return pb.InferenceRequest(
            model_name=self.model, inputs=[pb.Tensor(k, v) for k, v in tensors.items()],
            requested_output_names=outputs, request_id=request_id,
        )

    def submit(self, request_id: str, tensors, outputs, handler: EngineHandler) -> None:
        with self._lock:
            self._in_flight.add(request_id)
        self.pool.submit(self._run, request_id, tensors, outputs, handler)

    def _run(self, request_id, tensors, outputs, handler) -> None:
        pb = self.pb
        held: EngineChunk | None = None  # one response held back: the iterator only says "last" after it
        try:
            for response in self._request(tensors, outputs, request_id).exec(decoupled=True):
                if response.has_error():
                    msg = response.error().message()
                    call_handler(handler.on_error, msg, looks_invalid(msg))
                    return
                if pb.get_output_tensor_by_name(response, "output_ids") is None:
                    continue  # an empty (final) response
                if held is not None:
                    call_handler(handler.on_chunk, held)
                held = chunk_of(lambda n, r=response: _as_numpy(pb, r, n), False)
            if held is None:
                held = EngineChunk(_EMPTY_IDS)
            held.final = True
            call_handler(handler.on_chunk, held)
        except Exception as exc:  # noqa: BLE001
            call_handler(handler.on_error, f"tensorrt_llm_bls: {type(exc).__name__}: {exc}", False)
        finally:
            with self._lock:
                self._in_flight.discard(request_id)

    def stop(self, request_id: str) -> None:
        def work():
            try:
                for _ in self._request(stop_tensors(), ["output_ids"], request_id).exec(decoupled=True):
                    pass
            except Exception:  # noqa: BLE001 - an engine without `stop`: the request runs to its end
                pass

        self.pool.submit(work)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _as_numpy(pb, response, name):
    t = pb.get_output_tensor_by_name(response, name)
    return None if t is None else t.as_numpy()
