"""gRPC transport: tritonclient's bidirectional ``stream_infer``, the only gRPC call a decoupled model answers.

Sync: ``tritonclient.grpc.InferenceServerClient`` runs one stream at a time, so we keep a small pool of clients
(one per concurrent request). Async: one ``tritonclient.grpc.aio`` client; each request is its own stream.
Ending a stream early (``close()``, a client-side stop string, a timeout, Ctrl-C) does NOT cancel the gRPC call
while the server may still write to it: on Triton 2.51 that races the server's pending write and aborts the whole
server (``GRPC_CALL_ERROR_TOO_MANY_OPERATIONS``, docs/reliability.md). Instead the transport asks the engine to stop
the request (TensorRT-LLM ``stop`` to ``stop_model`` with the same request id: it ends both an ``ensemble`` and a
``tensorrt_llm_bls`` request), reads the stream to its final response (at most :data:`DRAIN_TIMEOUT_S`) and then
closes it; only a stream that does not end in that time is cancelled. A stream that stays silent for
``idle_timeout`` seconds ends with :class:`RequestTimeoutError` (a model whose stub died never answers).
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import AsyncGenerator, Generator

from koserve.client.errors import ClientError, RequestTimeoutError, ServerError, ServerUnavailableError
from koserve.client.result import Piece, token_count
from koserve.client.wire import WireRequest, WireTensor

_MAX_MESSAGE = 2**31 - 1
_POOL_SIZE = 16
DRAIN_TIMEOUT_S = 10.0  # after a stop: how long to read towards the final response before cancelling the call
RESTOP_S = 0.5  # ... sending the stop again this often meanwhile
DEFAULT_IDLE_TIMEOUT_S = 60.0  # no response for this long: the request fails (a dead model never answers)
DEFAULT_STOP_MODEL = "tensorrt_llm"


def _idle_message(model: str, url: str, idle: float) -> str:
    return (f"no response from model {model!r} at {url} for {idle:g} s (idle timeout): the model may have died; "
            "check the server's /health/ready")


def _channel_args() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        # Reconnect quickly after the server comes back (gRPC's default first backoff is 1 s, up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


async def _next_within(responses, seconds: float | None):
    """``await responses.__anext__()`` within ``seconds`` (None: no limit); raises ``TimeoutError`` after them.

    On Python 3.11 ``asyncio.wait_for`` returns the result, and drops the caller's cancellation, when the task is
    cancelled just as the awaited response arrives (CPython gh-86296; 3.12 rebuilt it on ``asyncio.timeout``,
    gh-96764 / PR #98518): a cancelled chat would then read its whole answer. ``asyncio.timeout`` (3.11+) keeps the
    cancellation; on 3.10 the ``wait_for`` fallback keeps the race."""
    if seconds is None:
        return await responses.__anext__()
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await responses.__anext__()
    return await asyncio.wait_for(responses.__anext__(), seconds)  # Python 3.10


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return deadline - time.perf_counter()


def _status_name(status: object) -> str:
    text = str(status or "")
    return text.rsplit(".", 1)[-1]


def map_grpc_error(exc: BaseException, url: str, model: str) -> ClientError:
    """A tritonclient / grpc failure as a koserve ClientError that says what failed."""
    status = msg = None
    if hasattr(exc, "status") and hasattr(exc, "message") and callable(exc.message):  # InferenceServerException
        status, msg = exc.status(), exc.message()
    elif hasattr(exc, "code") and hasattr(exc, "details"):  # grpc.RpcError / grpc.aio.AioRpcError
        status, msg = exc.code(), exc.details()
    msg = str(msg or exc).strip()
    name = _status_name(status)
    if name == "UNAVAILABLE":
        return ServerUnavailableError(f"cannot reach Triton at {url} (gRPC): {msg}")
    if name == "DEADLINE_EXCEEDED":
        return RequestTimeoutError(f"request to model {model!r} at {url} exceeded its deadline")
    if name == "CANCELLED":
        return ClientError(f"request to model {model!r} at {url} was cancelled: {msg}")
    where = f"Triton at {url}, model {model!r}"
    return ServerError(f"{where}: {msg}", status=name or None, server_message=msg)


def _config_timeout(connect_timeout: float, deadline: float | None, url: str, model: str) -> float:
    """Timeout for fetching a model's config: the connect timeout, cut to what is left of the request's deadline."""
    rem = _remaining(deadline)
    if rem is None:
        return connect_timeout
    if rem <= 0:
        raise RequestTimeoutError(f"request to model {model!r} at {url} exceeded its deadline")
    return min(connect_timeout, rem)


def _declared_inputs(config: dict) -> tuple[set[str], bool]:
    config = config.get("config", config)
    names = {i["name"] for i in config.get("input", [])}
    return names, int(config.get("max_batch_size", 0) or 0) > 0


# Inputs these text models (koserve's and NVIDIA's ensemble, BLS and engine) declare one-dimensional per request.
_ONE_DIM_INPUTS = ("max_tokens", "request_output_len", "text_input", "input_ids", "stop")


def _restricted(exc: BaseException) -> bool:
    """Triton refused the call for a missing restricted-API header (``--grpc-restricted-protocol``)."""
    return "is restricted" in str(exc)


def _declared_from_metadata(metadata: dict) -> tuple[set[str], bool]:
    """Declared inputs and batching from a model's metadata, for servers that restrict model-config (the Helm
    chart does): a batched model's metadata shapes carry the batch dimension, so a one-dimensional input has rank 2."""
    shapes = {i["name"]: i.get("shape", []) for i in metadata.get("inputs", [])}
    batch = next((len(shapes[n]) == 2 for n in _ONE_DIM_INPUTS if n in shapes), True)
    return set(shapes), batch


def _infer_inputs(tensors: list[WireTensor], batch: bool):
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    out = []
    for t in tensors:
        arr = t.as_numpy(batch)
        inp = grpcclient.InferInput(t.name, list(arr.shape), t.datatype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def _is_final(result) -> bool:
    params = result.get_response().parameters
    return "triton_final_response" in params and params["triton_final_response"].bool_param


def _payload(result) -> tuple[Piece, bool]:
    """(the response's :class:`Piece`, final flag) of one stream response."""
    response = result.get_response()
    final = False
    if "triton_final_response" in response.parameters:
        final = response.parameters["triton_final_response"].bool_param
    names = {o.name for o in response.outputs}
    if "text_output" not in names:
        return Piece(None), final
    arr = result.as_numpy("text_output")
    if arr is None:
        return Piece(None), final
    tokens = None
    if "num_output_tokens" in names:
        counts = result.as_numpy("num_output_tokens")
        tokens = token_count(None if counts is None else counts.reshape(-1).tolist())
    return Piece(b"".join(bytes(x) for x in arr.reshape(-1)), tokens), final


class GrpcTransport:
    """Synchronous gRPC transport (thread-safe: one pooled tritonclient client per concurrent request).

    ``stop_model``: the engine model a stream that ends early is stopped on (None: cancel the call instead);
    ``stops_on_close`` (:class:`~koserve.client.transport.Transport`) says that it does so itself."""

    protocol = "grpc"
    stops_on_close = True

    def __init__(self, url: str, *, connect_timeout: float = 5.0, headers: dict[str, str] | None = None,
                 stop_model: str | None = DEFAULT_STOP_MODEL, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S):
        self.url = url
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
        self.stop_model = stop_model
        self.idle_timeout = idle_timeout
        self._idle: list = []
        self._lock = threading.Lock()
        self._models: dict[str, tuple[set[str], bool]] = {}
        self._closed = False

    # -- pool --------------------------------------------------------------------------------------------------
    def _acquire(self):
        import tritonclient.grpc as grpcclient  # noqa: PLC0415

        with self._lock:
            if self._closed:
                raise ClientError("the client is closed")
            if self._idle:
                return self._idle.pop()
        try:
            return grpcclient.InferenceServerClient(self.url, channel_args=_channel_args())
        except Exception as exc:  # bad URL and the like
            raise ClientError(f"cannot create a gRPC client for {self.url!r}: {exc}") from None

    def _release(self, client, healthy: bool = True) -> None:
        with self._lock:
            if healthy and not self._closed and len(self._idle) < _POOL_SIZE:
                self._idle.append(client)
                return
        client.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    # -- calls -------------------------------------------------------------------------------------------------
    def _model_info(self, model: str, deadline: float | None) -> tuple[set[str], bool]:
        info = self._models.get(model)
        if info is not None:
            return info
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        timeout = _config_timeout(self.connect_timeout, deadline, self.url, model)
        client = self._acquire()
        try:
            try:
                info = _declared_inputs(client.get_model_config(model, as_json=True, headers=self.headers or None,
                                                                client_timeout=timeout))
            except InferenceServerException as exc:
                if not _restricted(exc):
                    raise
                info = _declared_from_metadata(client.get_model_metadata(
                    model, as_json=True, headers=self.headers or None, client_timeout=timeout))
        except InferenceServerException as exc:
            self._release(client)
            raise map_grpc_error(exc, self.url, model) from None
        self._release(client)
        self._models[model] = info
        return info

    def ready(self, model: str, timeout: float = 2.0) -> bool:
        """Whether the server is live and ``model`` ready (never raises)."""
        try:
            client = self._acquire()
        except ClientError:
            return False
        try:
            return bool(client.is_model_ready(model, headers=self.headers or None, client_timeout=timeout))
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False
        finally:
            self._release(client)

    def stop_engine(self, engine: str, request_id: str, timeout: float = 2.0) -> bool:
        """Ask ``engine`` (``tensorrt_llm``) to stop ``request_id``; best effort, never raises."""
        try:
            _, batch = self._model_info(engine, time.perf_counter() + timeout)
            deadline = time.perf_counter() + timeout
            request = WireRequest({}, request_id, stream=True)
            client = self._acquire()
            done: queue.SimpleQueue = queue.SimpleQueue()
            ended = False
            try:
                client.start_stream(callback=lambda result, error: done.put((result, error)), stream_timeout=timeout)
                client.async_stream_infer(engine, _stop_inputs(request.request_id, batch), request_id=request_id,
                                          enable_empty_final_response=True)
                while True:  # to the final response: then closing the call races no write of the server
                    result, error = done.get(timeout=max(deadline - time.perf_counter(), 0.01))
                    if error is not None:
                        return False
                    if _payload(result)[1]:
                        ended = True
                        return True
            finally:
                client.stop_stream(cancel_requests=not ended)
                self._release(client, healthy=False)
        except Exception:  # noqa: BLE001 - the request is being abandoned anyway
            return False

    def responses(self, model: str, request: WireRequest, deadline: float | None
                  ) -> Generator[Piece, None, None]:
        """Yield each response's text (bytes; ``None`` for one without text) until the final one."""
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        declared, batch = self._model_info(model, deadline)
        inputs = _infer_inputs(request.for_model(model, declared), batch)
        client = self._acquire()
        responses: queue.SimpleQueue = queue.SimpleQueue()
        healthy = True
        ended = False  # the final response (or an error: the server ended the call) arrived
        idle = self.idle_timeout

        def on_response(result, error) -> None:
            responses.put((result, error))

        try:
            rem = _remaining(deadline)
            try:
                client.start_stream(callback=on_response, stream_timeout=rem, headers=self.headers or None)
                client.async_stream_infer(model, inputs, request_id=request.request_id,
                                          enable_empty_final_response=True)
            except InferenceServerException as exc:
                healthy = False
                raise map_grpc_error(exc, self.url, model) from None
            while True:
                rem = _remaining(deadline)
                if rem is not None and rem <= 0:
                    raise RequestTimeoutError(f"request to model {model!r} at {self.url} exceeded its deadline")
                wait = rem if idle is None else idle if rem is None else min(rem, idle)
                try:
                    result, error = responses.get(timeout=wait)
                except queue.Empty:
                    if idle is not None and (rem is None or idle < rem):
                        raise RequestTimeoutError(_idle_message(model, self.url, idle)) from None
                    raise RequestTimeoutError(
                        f"request to model {model!r} at {self.url} exceeded its deadline"
                    ) from None
                if error is not None:
                    healthy = False
                    ended = True
                    raise map_grpc_error(error, self.url, model)
                piece, final = _payload(result)
                if final:
                    ended = True
                yield piece
                if final:
                    return
        finally:
            cancel = not ended
            if not ended and healthy and self.stop_model:  # ended early: stop the engine, read to the end
                cancel = not self._stop_and_drain(request.request_id, responses)
            client.stop_stream(cancel_requests=cancel)
            self._release(client, healthy and not cancel)

    def _stop_and_drain(self, request_id: str, responses: queue.SimpleQueue) -> bool:
        """Stop ``request_id`` on the engine and read its stream to the final response; whether that arrived.

        The stop is sent again every :data:`RESTOP_S`: one that reaches the engine before the request does (an
        ensemble request still in ``preprocessing``) finds nothing to stop."""
        deadline = time.perf_counter() + DRAIN_TIMEOUT_S
        next_stop = 0.0
        while True:
            now = time.perf_counter()
            if now >= deadline:
                return False
            if now >= next_stop:  # a stop that failed (server busy) is tried again too
                self.stop_engine(self.stop_model, request_id, timeout=min(2.0, deadline - now))
                next_stop = time.perf_counter() + RESTOP_S
            try:
                result, error = responses.get(timeout=max(min(next_stop, deadline) - time.perf_counter(), 0.0))
            except queue.Empty:
                continue
            if error is not None:
                return True  # the server ended the call itself
            if _payload(result)[1]:
                return True


def _stop_inputs(request_id: str, batch: bool):
    from koserve.client.wire import engine_stop_request  # noqa: PLC0415

    return _infer_inputs(list(engine_stop_request(request_id).tensors.values()), batch)


class AsyncGrpcTransport:
    """asyncio gRPC transport on ``tritonclient.grpc.aio`` (one client, one stream per request); ends streams as
    :class:`GrpcTransport` does."""

    protocol = "grpc"
    stops_on_close = True

    def __init__(self, url: str, *, connect_timeout: float = 5.0, headers: dict[str, str] | None = None,
                 stop_model: str | None = DEFAULT_STOP_MODEL, idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S):
        self.url = url
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
        self.stop_model = stop_model
        self.idle_timeout = idle_timeout
        self._ending: set = set()  # background tasks ending the calls of cancelled tasks (close() waits for them)
        self._client = None
        self._loop = None
        self._models: dict[str, tuple[set[str], bool]] = {}
        self._closed = False

    def _get_client(self):
        import tritonclient.grpc.aio as aioclient  # noqa: PLC0415

        if self._closed:
            raise ClientError("the client is closed")
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            try:
                self._client = aioclient.InferenceServerClient(self.url, channel_args=_channel_args())
            except Exception as exc:  # noqa: BLE001
                raise ClientError(f"cannot create a gRPC client for {self.url!r}: {exc}") from None
            self._loop = loop
        return self._client

    async def close(self) -> None:
        if self._ending:
            await asyncio.wait(list(self._ending), timeout=DRAIN_TIMEOUT_S + 2.5)
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _model_info(self, model: str, deadline: float | None) -> tuple[set[str], bool]:
        info = self._models.get(model)
        if info is not None:
            return info
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        timeout = _config_timeout(self.connect_timeout, deadline, self.url, model)
        client = self._get_client()
        try:
            try:
                info = _declared_inputs(await client.get_model_config(
                    model, as_json=True, headers=self.headers or None, client_timeout=timeout))
            except InferenceServerException as exc:
                if not _restricted(exc):
                    raise
                info = _declared_from_metadata(await client.get_model_metadata(
                    model, as_json=True, headers=self.headers or None, client_timeout=timeout))
        except InferenceServerException as exc:
            raise map_grpc_error(exc, self.url, model) from None
        self._models[model] = info
        return info

    async def ready(self, model: str, timeout: float = 2.0) -> bool:
        try:
            client = self._get_client()
            return bool(await client.is_model_ready(model, headers=self.headers or None, client_timeout=timeout))
        except Exception:  # noqa: BLE001
            return False

    async def stop_engine(self, engine: str, request_id: str, timeout: float = 2.0) -> bool:
        """Ask ``engine`` (``tensorrt_llm``) to stop ``request_id``; best effort, never raises."""
        try:
            _, batch = await self._model_info(engine, time.perf_counter() + timeout)
            client = self._get_client()
            inputs = _stop_inputs(request_id, batch)

            async def one_request():
                yield {"model_name": engine, "inputs": inputs, "request_id": request_id}

            call = client.stream_infer(one_request(), stream_timeout=timeout)
            ended = False
            try:
                async def drain() -> bool:
                    nonlocal ended
                    ok = True
                    async for _result, error in call:
                        ok = ok and error is None
                    ended = True
                    return ok

                return await asyncio.wait_for(drain(), timeout)
            finally:
                if not ended:
                    call.cancel()
        except Exception:  # noqa: BLE001
            return False

    async def responses(self, model: str, request: WireRequest, deadline: float | None
                        ) -> AsyncGenerator[Piece, None]:
        declared, batch = await self._model_info(model, deadline)
        inputs = _infer_inputs(request.for_model(model, declared), batch)
        results = self.results(model, inputs, request.request_id, deadline)
        try:
            async for result in results:
                yield _payload(result)[0]
        finally:
            await results.aclose()  # at once, not when collected: an early end stops the engine now

    async def results(self, model: str, inputs: list, request_id: str, deadline: float | None
                      ) -> AsyncGenerator[object, None]:
        """The raw ``stream_infer`` results of one request to ``model`` (tritonclient ``InferInput`` objects), up
        to its final response; ended early (``aclose()``, cancellation) it stops the engine as :meth:`responses`
        does. What the gateway's direct engine path reads ``output_ids`` from."""
        import grpc  # noqa: PLC0415
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        client = self._get_client()

        async def one_request():
            yield {"model_name": model, "inputs": inputs, "request_id": request_id}

        timeout_msg = f"request to model {model!r} at {self.url} exceeded its deadline"
        idle = self.idle_timeout
        try:
            call = client.stream_infer(one_request(), stream_timeout=_remaining(deadline),
                                       headers=self.headers or None)
        except InferenceServerException as exc:
            raise map_grpc_error(exc, self.url, model) from None
        ended = cancelled = False
        try:
            while True:
                rem = _remaining(deadline)
                if rem is not None and rem <= 0:
                    raise RequestTimeoutError(timeout_msg)
                wait = rem if idle is None else idle if rem is None else min(rem, idle)
                try:
                    result, error = await _next_within(call, wait)
                except StopAsyncIteration:
                    ended = True
                    return
                except asyncio.TimeoutError:
                    if idle is not None and (rem is None or idle < rem):
                        raise RequestTimeoutError(_idle_message(model, self.url, idle)) from None
                    raise RequestTimeoutError(timeout_msg) from None
                except (InferenceServerException, grpc.RpcError) as exc:
                    ended = True
                    raise map_grpc_error(exc, self.url, model) from None
                if error is not None:
                    ended = True
                    raise map_grpc_error(error, self.url, model)
                final = _is_final(result)
                if final:
                    ended = True
                yield result
                if final:
                    return
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if not ended:
                if self.stop_model and cancelled:  # the task was cancelled: do not delay it, end the call aside
                    task = asyncio.ensure_future(self._end_call(call, request_id))
                    self._ending.add(task)
                    task.add_done_callback(self._ending.discard)
                else:
                    await self._end_call(call, request_id)

    async def _end_call(self, call, request_id: str) -> None:
        if not (self.stop_model and await self._stop_and_drain(call, request_id)):
            call.cancel()

    async def _stop_and_drain(self, call, request_id: str) -> bool:
        """Stop ``request_id`` on the engine and read ``call`` to its end; whether it ended (see GrpcTransport)."""
        async def to_the_end() -> None:
            async for result, error in call:
                if error is not None or _payload(result)[1]:
                    return

        try:
            deadline = time.perf_counter() + DRAIN_TIMEOUT_S
            reader = asyncio.ensure_future(to_the_end())
            try:
                while not reader.done():
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        return False
                    await self.stop_engine(self.stop_model, request_id, timeout=min(2.0, left))
                    await asyncio.wait([reader], timeout=min(RESTOP_S, max(deadline - time.perf_counter(), 0)))
                return reader.exception() is None
            finally:
                if not reader.done():
                    reader.cancel()
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - then the call is cancelled
            return False
