"""The ``tensorrt_llm_bls`` model: text in, text out, streaming, calling the engine model of its own server.

Same interface as ``ensemble``. Per request it tokenizes in-process (no hop through ``preprocessing``), calls the
engine model ``tensorrt_llm`` (decoupled, streaming) and turns its responses into text with its own
:class:`TextStream` — so the text is exact (whole characters, spaces kept, stop strings removed at the text level)
whatever the client sends, request id or not.

Responses: with ``stream=true`` one response per engine response (one per generated token chunk), **even when its
text is empty** (a byte-fallback piece of a Hangul syllable, a held-back stop-string prefix): clients count tokens and
tell ``length`` from ``stop`` by counting responses, exactly as through ``ensemble``. Text still held back at the end
goes into the last response. When generation stops in the middle of a character (``max_tokens``) the incomplete
character is dropped — never U+FFFD, never partial UTF-8 — the same text as ``ensemble`` gives.

How the engine is called (``engine_transport`` parameter):

- ``grpc`` (default): over Triton's own gRPC endpoint on loopback (``tritonclient`` protobufs over ``grpc.aio``), one
  bidirectional stream per request, all on the stub's asyncio event loop — one thread sends every response and
  nothing waits on a python-backend BLS response iterator. Cancelling that gRPC call reaches the engine directly (as
  for any client), so a client that goes away or a matched stop string stops generation. The port is read from the
  parent tritonserver's command line (``--grpc-port``), or from the ``engine_grpc_url`` parameter /
  ``KOSERVE_BLS_GRPC_URL``.
- ``bls``: Triton's python-backend BLS (``pb_utils.InferenceRequest.exec(decoupled=True)``), the blocking ``next()``
  of its response iterator in a thread pool, a TensorRT-LLM ``stop`` request to end a running engine request.
  Measured unstable under 64-stream load on Triton 2.51 (the stub aborts with ``malloc(): unaligned ... chunk``):
  kept for servers without a gRPC endpoint only. See docs/serving.md.

Cancellation: Triton 2.51 does not pass a client's cancellation through a BLS model, so the BLS polls its own
request's ``is_cancelled()`` every ``cancel_poll_s`` (parameter or ``KOSERVE_BLS_CANCEL_POLL_S``; default 0.25 s, 0 =
off) while it waits for the engine and after each engine response, and cancels its engine call when the client went
away. The engine request also carries the client's request id (when it set one), so a TensorRT-LLM ``stop`` request
for that id stops generation too, as through ``ensemble``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from koserve.errors import InvalidRequestError, KoserveError
from koserve.serving.params import GenerationRequest, parse_generation_request
from koserve.serving.postprocess import TextStream, tokens_of
from koserve.serving.preprocess import EngineInputs, Preprocessor
from koserve.serving.settings import ModelSettings, model_parameters
from koserve.serving.triton_io import bytes_tensor, error_response, read_inputs

INPUT_NAMES = (
    "text_input", "max_tokens", "bad_words", "stop_words", "end_id", "pad_id", "top_k", "top_p", "temperature",
    "length_penalty", "repetition_penalty", "presence_penalty", "frequency_penalty", "min_length", "beam_width",
    "random_seed", "stream", "exclude_input_in_output", "return_log_probs",
)
# our sampling field -> (engine tensor, numpy dtype)
ENGINE_SAMPLING = {
    "temperature": ("temperature", np.float32),
    "top_k": ("runtime_top_k", np.int32),
    "top_p": ("runtime_top_p", np.float32),
    "length_penalty": ("len_penalty", np.float32),
    "repetition_penalty": ("repetition_penalty", np.float32),
    "presence_penalty": ("presence_penalty", np.float32),
    "frequency_penalty": ("frequency_penalty", np.float32),
    "min_length": ("min_length", np.int32),
    "beam_width": ("beam_width", np.int32),
    "random_seed": ("random_seed", np.uint64),
}
CANCEL_POLL_S = 0.25  # how often to ask is_cancelled() when polling is on
TRANSPORTS = ("grpc", "bls")
_done = object()
_ids = itertools.count()


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


class _GrpcEngine:
    """Calls the engine model over gRPC from the stub's event loop (``grpc.aio``); one stream per request."""

    def __init__(self, url: str, model: str):
        self.url, self.model = url, model
        self._channel = None
        self._stub = None

    def _ensure(self):
        if self._stub is None:
            import grpc  # noqa: PLC0415
            from tritonclient.grpc import service_pb2_grpc  # noqa: PLC0415

            opts = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]
            self._channel = grpc.aio.insecure_channel(self.url, options=opts)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    @staticmethod
    def request_proto(model: str, tensors: dict[str, np.ndarray], outputs: list[str], request_id: str):
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

    async def stream(self, tensors, outputs, request_id, is_cancelled):
        """Yield an :class:`EngineChunk` per engine response; returns early (cancelling the call) when
        ``is_cancelled`` (None: never polled) turns true; the consumer closing the generator cancels the call too."""
        stub = self._ensure()
        request = self.request_proto(self.model, tensors, outputs, request_id)
        call = stub.ModelStreamInfer()
        # Cancel polling in a watchdog task (not a timeout around every read: that costs a task, a timer and a set
        # per token). When the client went away it cancels the call; the pending read then ends.
        gone = []
        watchdog = None
        if is_cancelled is not None:

            async def watch():
                while not call.done():
                    await asyncio.sleep(CANCEL_POLL_S)
                    if is_cancelled():
                        gone.append(True)
                        call.cancel()
                        return

            watchdog = asyncio.ensure_future(watch())
        eof = _grpc_eof()
        try:
            await call.write(request)
            await call.done_writing()
            while True:
                try:
                    message = await call.read()
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if gone and not (task is not None and task.cancelling()):
                        return  # our watchdog cancelled the call: the client is gone
                    raise
                if message is None or message is eof:
                    return
                if gone:
                    return
                if message.error_message:
                    raise EngineError(message.error_message, invalid=_looks_invalid(message.error_message))
                response = message.infer_response
                final_param = response.parameters.get("triton_final_response")
                final = bool(final_param is not None and final_param.bool_param)
                if not response.outputs:
                    if final:
                        yield EngineChunk(np.zeros((0,), dtype=np.int32), final=True)
                        return
                    continue
                yield _chunk(_proto_getter(response), final)
                if final:
                    return
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if not call.done():
                call.cancel()

    async def close(self):
        if self._channel is not None:
            await self._channel.close()


def _grpc_eof():
    import grpc  # noqa: PLC0415

    return grpc.aio.EOF


_NP_DTYPES = {
    "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64, "FP16": np.float16,
    "BOOL": np.bool_, "UINT64": np.uint64, "UINT32": np.uint32, "INT8": np.int8, "UINT8": np.uint8,
}


def _proto_getter(response):
    """``name -> numpy array or None`` for the outputs of a ``ModelInferResponse`` (raw contents, numeric types),
    one pass over the outputs instead of ``InferResult.as_numpy``'s scan per name."""
    raw = response.raw_output_contents
    found = {}
    for index, output in enumerate(response.outputs):
        found[output.name] = (index, output)

    def get(name):
        hit = found.get(name)
        if hit is None:
            return None
        index, output = hit
        dtype = _NP_DTYPES.get(output.datatype)
        if dtype is None or index >= len(raw):  # anything unusual: tritonclient's general decoder
            from tritonclient.grpc import InferResult  # noqa: PLC0415

            return InferResult(response).as_numpy(name)
        return np.frombuffer(raw[index], dtype=dtype).reshape(tuple(output.shape))

    return get


def _looks_invalid(message: str) -> bool:
    return "must" in message or "exceeds" in message or "outside" in message or "invalid" in message.lower()


def _chunk(get, final: bool) -> EngineChunk:
    out, seq = get("output_ids"), get("sequence_length")
    return EngineChunk(
        ids=tokens_of(out, seq),
        log_probs=None if get("output_log_probs") is None else np.asarray(get("output_log_probs"), np.float32).ravel(),
        cum_log_prob=None if get("cum_log_probs") is None else np.asarray(get("cum_log_probs"), np.float32).ravel(),
        final=final,
    )


def _next(iterator):
    try:
        return next(iterator)
    except StopIteration:
        return _done


class _PbEngine:
    """Calls the engine through python-backend BLS (``exec(decoupled=True)``), ``next()`` in a thread pool."""

    def __init__(self, pb, model: str, max_threads: int):
        self.pb, self.model = pb, model
        self.pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="bls")

    def _request(self, tensors, outputs, request_id):
        pb = self.pb
        return pb.InferenceRequest(
            model_name=self.model, inputs=[pb.Tensor(k, v) for k, v in tensors.items()],
            requested_output_names=outputs, request_id=request_id,
        )

    async def stream(self, tensors, outputs, request_id, is_cancelled):
        pb = self.pb
        loop = asyncio.get_running_loop()
        iterator = await loop.run_in_executor(
            self.pool, lambda: self._request(tensors, outputs, request_id).exec(decoupled=True)
        )
        held: EngineChunk | None = None  # one response held back: the iterator only says "last" after it
        pending = None
        finished = False
        try:
            while True:
                pending = self.pool.submit(_next, iterator)
                future = asyncio.wrap_future(pending)
                while True:
                    done, _ = await asyncio.wait({future}, timeout=CANCEL_POLL_S if is_cancelled else None)
                    if done:
                        break
                    if is_cancelled():
                        return
                response = future.result()
                pending = None
                if response is _done:
                    finished = True
                    if held is not None:
                        held.final = True
                        yield held
                    else:
                        yield EngineChunk(np.zeros((0,), dtype=np.int32), final=True)
                    return
                if response.has_error():
                    msg = response.error().message()
                    raise EngineError(msg, invalid=_looks_invalid(msg))
                if pb.get_output_tensor_by_name(response, "output_ids") is None:
                    continue  # an empty (final) response
                chunk = _chunk(lambda n, r=response: _as_numpy(pb, r, n), False)
                if held is not None:
                    yield held
                held = chunk
        finally:
            if not finished:
                self._stop(request_id, iterator, pending)

    def _stop(self, request_id, iterator, pending) -> None:
        """Send the engine a TensorRT-LLM ``stop`` request and drain the old stream, in the background."""
        pb = self.pb
        stop = {
            "input_ids": np.zeros((1, 1), dtype=np.int32),
            "input_lengths": np.ones((1, 1), dtype=np.int32),
            "request_output_len": np.ones((1, 1), dtype=np.int32),
            "stop": np.array([[True]], dtype=np.bool_),
        }

        def work():
            try:
                for _ in self._request(stop, ["output_ids"], request_id).exec(decoupled=True):
                    pass
            except Exception:  # noqa: BLE001 - an engine without `stop`: the drain below still ends
                pass
            if pending is not None:
                try:
                    pending.result(timeout=600)
                except Exception:  # noqa: BLE001
                    return
            for _ in range(1_000_000):  # bounded: at most max_tokens responses remain
                if _next(iterator) is _done:
                    break

        del pb
        self.pool.submit(work)

    async def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def _as_numpy(pb, response, name):
    t = pb.get_output_tensor_by_name(response, name)
    return None if t is None else t.as_numpy()


class _Sender:
    """The request's response sender, with ``is_cancelled`` (an IPC round trip) rate-limited to one call per
    ``poll_s`` seconds, and never called when ``poll_s`` is 0."""

    __slots__ = ("_sender", "_poll_s", "_checked", "_cancelled")

    def __init__(self, sender, poll_s: float = CANCEL_POLL_S):
        self._sender = sender
        self._poll_s = poll_s
        self._checked = 0.0
        self._cancelled = False

    @property
    def polling(self) -> bool:
        return self._poll_s > 0

    def send(self, *args, **kwargs):
        return self._sender.send(*args, **kwargs)

    def is_cancelled(self) -> bool:
        if not self._poll_s:
            return False
        now = time.monotonic()
        if not self._cancelled and now - self._checked >= self._poll_s:
            self._checked = now
            self._cancelled = bool(self._sender.is_cancelled())
        return self._cancelled


class BlsModel:
    """Logic of the BLS model; ``pb`` is ``triton_python_backend_utils``."""

    def __init__(self, pb, model_config, *, transport: str | None = None):
        self.pb = pb
        self.settings = ModelSettings.from_model_config(model_config)
        self.pre = Preprocessor(self.settings)
        params = model_parameters(model_config)
        transport = transport or os.environ.get("KOSERVE_BLS_TRANSPORT") or params.get("engine_transport") or "grpc"
        if transport not in TRANSPORTS:
            raise KoserveError(f"engine_transport must be one of {TRANSPORTS}, got {transport!r}")
        url = own_grpc_url(params.get("engine_grpc_url", "")) if transport == "grpc" else None
        if transport == "grpc" and url is None:
            transport = "bls"  # no gRPC endpoint on this server (e.g. --allow-grpc=false)
        self.transport = transport
        poll = os.environ.get("KOSERVE_BLS_CANCEL_POLL_S") or params.get("cancel_poll_s") or str(CANCEL_POLL_S)
        try:
            self.cancel_poll_s = max(0.0, float(poll))
        except ValueError:
            raise KoserveError(f"cancel_poll_s must be a number of seconds, got {poll!r}") from None
        self.engine = (
            _GrpcEngine(url, self.settings.engine_model)
            if transport == "grpc"
            else _PbEngine(pb, self.settings.engine_model, int(os.environ.get("KOSERVE_BLS_THREADS", "256")))
        )

    # -- engine request ------------------------------------------------------------------------------------
    def engine_tensors(self, req: GenerationRequest, prepared: EngineInputs) -> tuple[dict[str, np.ndarray], list]:
        tensors = {
            "input_ids": prepared.input_ids[None, :],
            "input_lengths": np.array([[prepared.input_len]], dtype=np.int32),
            "request_output_len": np.array([[prepared.max_tokens]], dtype=np.int32),
            "end_id": np.array([[prepared.end_id]], dtype=np.int32),
            "pad_id": np.array([[prepared.pad_id]], dtype=np.int32),
            "stop_words_list": prepared.stop_words_list[None, :, :],
            "bad_words_list": prepared.bad_words_list[None, :, :],
            "streaming": np.array([[True]], dtype=np.bool_),
            # the BLS echoes the prompt text itself (exact, and never seen by the stop-string matcher)
            "exclude_input_in_output": np.array([[True]], dtype=np.bool_),
            "return_log_probs": np.array([[req.return_log_probs]], dtype=np.bool_),
        }
        for field, (name, dtype) in ENGINE_SAMPLING.items():
            value = getattr(req.sampling, field)
            if value is not None:
                tensors[name] = np.array([[value]], dtype=dtype)
        outputs = ["output_ids", "sequence_length"]
        if req.return_log_probs:
            outputs += ["cum_log_probs", "output_log_probs"]
        return tensors, outputs

    # -- serving -------------------------------------------------------------------------------------------
    async def execute(self, requests) -> None:
        await asyncio.gather(*(self.serve(r) for r in requests))

    async def serve(self, request) -> None:
        pb = self.pb
        sender = _Sender(request.get_response_sender(), self.cancel_poll_s)
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            req = parse_generation_request(read_inputs(pb, request, INPUT_NAMES))
            prepared = self.pre.for_request(req)
        except (KoserveError, ValueError) as exc:
            sender.send(error_response(pb, str(exc)), flags=final)
            return
        # the client's id: a TensorRT-LLM `stop` for it (the koserve client's cancel) reaches the engine request
        inner_id = request.request_id() or f"bls#{next(_ids)}-{uuid.uuid4().hex[:8]}"
        try:
            await self._generate(req, prepared, inner_id, sender)
        except EngineError as exc:
            sender.send(error_response(pb, str(exc), invalid=exc.invalid), flags=final)
        except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the model
            try:
                sender.send(error_response(pb, f"tensorrt_llm_bls: {type(exc).__name__}: {exc}", invalid=False,
                                           code="UNAVAILABLE" if _is_unavailable(exc) else "INTERNAL"),
                            flags=final)
            except Exception:  # noqa: BLE001 - the response may already be complete
                pass

    async def _generate(self, req: GenerationRequest, prepared: EngineInputs, inner_id: str, sender) -> None:
        pb = self.pb
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        stream = TextStream(self.pre.tokenizer, self.pre.stop_words(req.stop_words))
        tensors, outputs = self.engine_tensors(req, prepared)
        pieces: list[str] = [req.text] if not req.exclude_input_in_output else []
        prefix = req.text if (req.stream and not req.exclude_input_in_output) else ""
        log_probs: list[np.ndarray] = []
        cum_log_prob = None
        ended = False
        chunks = self.engine.stream(tensors, outputs, inner_id, sender.is_cancelled if sender.polling else None)
        try:
            async for chunk in chunks:
                delta = stream.add(chunk.ids)
                if chunk.log_probs is not None:
                    log_probs.append(chunk.log_probs)
                if chunk.cum_log_prob is not None:
                    cum_log_prob = chunk.cum_log_prob
                if sender.is_cancelled():
                    return  # the client is gone: nothing to send (closing `chunks` stops the engine request)
                ended = chunk.final or stream.stopped
                if ended:
                    delta += stream.finish()
                if not req.stream:
                    pieces.append(delta)
                elif ended and not (prefix or delta or chunk.ids.size or log_probs):
                    sender.send(flags=final)  # the engine's empty final response: nothing to add
                else:
                    sender.send(self._response(prefix + delta, req, log_probs, cum_log_prob),
                                flags=final if ended else 0)
                    prefix, log_probs = "", []
                if ended:
                    break  # on a matched stop string, leaving the loop closes `chunks`: the engine stops
        finally:
            await chunks.aclose()
        if not ended:  # the engine stream ended without a final response (or the client went away)
            if sender.is_cancelled():
                return
            tail = stream.finish()
            if req.stream:
                text = prefix + tail
                if text:
                    sender.send(self._response(text, req, log_probs, cum_log_prob), flags=final)
                else:
                    sender.send(flags=final)
                return
            pieces.append(tail)
        if not req.stream:
            sender.send(self._response("".join(pieces), req, log_probs, cum_log_prob), flags=final)

    def _response(self, text: str, req: GenerationRequest, log_probs, cum_log_prob):
        pb = self.pb
        tensors = [bytes_tensor(pb, "text_output", text)]
        if req.return_log_probs:
            lp = np.concatenate(log_probs) if log_probs else np.zeros((0,), dtype=np.float32)
            tensors.append(pb.Tensor("output_log_probs", lp.reshape(1, -1)))
            cl = cum_log_prob if cum_log_prob is not None else np.zeros((1,), dtype=np.float32)
            tensors.append(pb.Tensor("cum_log_probs", cl.reshape(1, -1)[:, :1]))
        return pb.InferenceResponse(output_tensors=tensors)

    def finalize(self) -> None:
        engine = self.engine
        if isinstance(engine, _PbEngine):
            engine.pool.shutdown(wait=False, cancel_futures=True)


def _is_unavailable(exc: Exception) -> bool:
    name = type(exc).__name__
    return "AioRpcError" in name or "Unavailable" in name or isinstance(exc, (ConnectionError, TimeoutError))


__all__ = ["BlsModel", "EngineError", "InvalidRequestError", "grpc_url_from_cmdline", "own_grpc_url"]
