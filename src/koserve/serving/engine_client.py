"""How the ``tensorrt_llm_bls`` model calls the engine model (``tensorrt_llm``) of its own server.

Both clients take a request (tensors, requested outputs, an id unique among the requests in flight) and a handler,
and call ``handler.on_chunk(EngineChunk)`` for every engine response (the last one has ``final``) or
``handler.on_error(message, invalid)`` once, from their own threads. ``stop(request_id)`` sends TensorRT-LLM's
``stop`` request for a request in flight.

- :class:`GrpcEngineClient` (default): ONE ``ModelStreamInfer`` stream over the server's own gRPC endpoint on
  loopback carries every request of the model; one reader thread (sync gRPC, which waits without the GIL) routes the
  responses by request id — Triton puts the id on every response of a stream, errors included. No asyncio, no
  per-request call objects: per engine response, one protobuf parse and one handler call. ``stop`` goes over a call
  of its own so that its answer never reaches the shared stream.
- :class:`PbEngineClient`: Triton's python-backend BLS (``exec(decoupled=True)``), a thread per request blocking on
  the response iterator. For servers without a gRPC endpoint; measured unstable under 64-stream load on Triton 2.51
  (the stub aborted with ``malloc(): unaligned ... chunk``).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable
from typing import Protocol

import numpy as np

from koserve.errors import KoserveError
from koserve.serving.postprocess import tokens_of

log = logging.getLogger("koserve")
STOP_TIMEOUT_S = 10.0


class EngineError(KoserveError):
    """The engine answered a request with an error (its message is passed on to the client)."""

    def __init__(self, message: str, invalid: bool = False):
        super().__init__(message)
        self.invalid = invalid


@dataclass
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
    raw = response.raw_output_contents
    arrays = {}
    for index, output in enumerate(response.outputs):
        dtype = _NP_DTYPES.get(output.datatype)
        if dtype is None or index >= len(raw):  # anything unusual: tritonclient's general decoder
            from tritonclient.grpc import InferResult  # noqa: PLC0415

            arrays[output.name] = InferResult(response).as_numpy(output.name)
        else:
            arrays[output.name] = np.frombuffer(raw[index], dtype=dtype).reshape(tuple(output.shape))
    return chunk_of(arrays.get, final)


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


class _SharedStream:
    """One ``ModelStreamInfer`` call and the handlers of the requests sent on it."""

    def __init__(self, stub):
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.routes: dict[str, EngineHandler] = {}
        self.alive = True
        self.call = stub.ModelStreamInfer(iter(self.requests.get, None))


class GrpcEngineClient:
    """The engine over the server's own gRPC endpoint: one shared stream, one reader thread (see module doc)."""

    def __init__(self, url: str, model: str, after_each: Callable[[], None] | None = None):
        self.url, self.model = url, model
        self._after_each = after_each  # called on the reader thread after each engine response
        self._lock = threading.Lock()
        self._stub = None
        self._channel = None
        self._stream: _SharedStream | None = None
        self._closed = False

    def _ensure_stub(self):
        if self._stub is None:
            import grpc  # noqa: PLC0415
            from tritonclient.grpc import service_pb2_grpc  # noqa: PLC0415

            opts = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]
            self._channel = grpc.insecure_channel(self.url, options=opts)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    def in_flight(self, request_id: str) -> bool:
        stream = self._stream
        return stream is not None and request_id in stream.routes

    def submit(self, request_id: str, tensors: dict[str, np.ndarray], outputs: list[str],
               handler: EngineHandler) -> None:
        """Send a request (``request_id`` must not be in flight); its responses go to ``handler``."""
        message = request_proto(self.model, tensors, outputs, request_id)
        with self._lock:
            if self._closed:
                raise EngineError("tensorrt_llm_bls is shutting down", invalid=False)
            stream = self._stream
            if stream is None or not stream.alive:
                stream = _SharedStream(self._ensure_stub())
                self._stream = stream
                threading.Thread(target=self._read, args=(stream,), name="koserve-engine-reader", daemon=True).start()
            if request_id in stream.routes:
                raise KoserveError(f"engine request id {request_id!r} is already in flight")
            stream.routes[request_id] = handler
        stream.requests.put(message)

    def _read(self, stream: _SharedStream) -> None:
        reason = "the engine stream ended"
        routes = stream.routes
        after_each = self._after_each
        try:
            for message in stream.call:
                _route(message, routes)
                if after_each is not None:
                    _call(after_each)
        except Exception as exc:  # noqa: BLE001 - grpc.RpcError and the like: every request on it fails
            details = getattr(exc, "details", None)
            reason = f"the engine stream failed: {(details() if callable(details) else '') or exc}"
        with self._lock:
            stream.alive = False
            if self._stream is stream:
                self._stream = None
            orphans = list(routes.values())
            routes.clear()
        stream.requests.put(None)
        if orphans and not self._closed:
            log.warning("tensorrt_llm_bls: %s with %d requests in flight", reason, len(orphans))
        for handler in orphans:
            _call(handler.on_error, f"tensorrt_llm_bls: {reason}", False)

    def stop(self, request_id: str) -> None:
        """Send TensorRT-LLM's ``stop`` for ``request_id`` on a call of its own, in the background."""
        stub = self._ensure_stub()
        message = request_proto(self.model, stop_tensors(), ["output_ids"], request_id)

        def work():
            try:
                call = stub.ModelStreamInfer(iter([message]), timeout=STOP_TIMEOUT_S)
                for reply in call:
                    final = reply.infer_response.parameters.get("triton_final_response")
                    if reply.error_message or (final is not None and final.bool_param):
                        call.cancel()
                        return
            except Exception as exc:  # noqa: BLE001 - the request may have ended meanwhile
                log.debug("tensorrt_llm_bls: stop %s: %s", request_id, exc)

        threading.Thread(target=work, name="koserve-engine-stop", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.requests.put(None)
            stream.call.cancel()
        if self._channel is not None:
            self._channel.close()


def _route(message, routes: dict[str, EngineHandler]) -> None:
    """Hand one ``ModelStreamInferResponse`` to the handler of its request id (and forget the id on its last one)."""
    response = message.infer_response
    handler = routes.get(response.id)
    if handler is None:
        return  # a request already answered (e.g. its client went away): drop the rest
    if message.error_message:
        del routes[response.id]
        _call(handler.on_error, message.error_message, looks_invalid(message.error_message))
        return
    final_param = response.parameters.get("triton_final_response")
    final = bool(final_param is not None and final_param.bool_param)
    if final:
        del routes[response.id]
    if response.outputs:
        _call(handler.on_chunk, chunk_from_proto(response, final))
    elif final:
        _call(handler.on_chunk, EngineChunk(_EMPTY_IDS, final=True))


def _call(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - one request's handler must not stop the reader
        log.exception("tensorrt_llm_bls: handling an engine response failed")


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
                    _call(handler.on_error, msg, looks_invalid(msg))
                    return
                if pb.get_output_tensor_by_name(response, "output_ids") is None:
                    continue  # an empty (final) response
                if held is not None:
                    _call(handler.on_chunk, held)
                held = chunk_of(lambda n, r=response: _as_numpy(pb, r, n), False)
            if held is None:
                held = EngineChunk(_EMPTY_IDS)
            held.final = True
            _call(handler.on_chunk, held)
        except Exception as exc:  # noqa: BLE001
            _call(handler.on_error, f"tensorrt_llm_bls: {type(exc).__name__}: {exc}", False)
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
