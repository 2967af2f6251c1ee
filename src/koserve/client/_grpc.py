"""gRPC transport: tritonclient's bidirectional ``stream_infer``, the only gRPC call a decoupled model answers.

Sync: ``tritonclient.grpc.InferenceServerClient`` runs one stream at a time, so we keep a small pool of clients
(one per concurrent request). Async: one ``tritonclient.grpc.aio`` client; each request is its own stream.
Closing / cancelling a request cancels its gRPC call, which cancels the request inside Triton.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from typing import AsyncIterator, Iterator

from koserve.client.errors import ClientError, RequestTimeoutError, ServerError, ServerUnavailableError
from koserve.client.result import Piece, token_count
from koserve.client.wire import WireRequest, WireTensor

_MAX_MESSAGE = 2**31 - 1
_POOL_SIZE = 16


def _channel_args() -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", _MAX_MESSAGE),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        # Reconnect quickly after the server comes back (gRPC's default first backoff is 1 s, up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


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


def _infer_inputs(tensors: list[WireTensor], batch: bool):
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    out = []
    for t in tensors:
        arr = t.as_numpy(batch)
        inp = grpcclient.InferInput(t.name, list(arr.shape), t.datatype)
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


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
    """Synchronous gRPC transport (thread-safe: one pooled tritonclient client per concurrent request)."""

    protocol = "grpc"

    def __init__(self, url: str, *, connect_timeout: float = 5.0, headers: dict[str, str] | None = None):
        self.url = url
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
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
            config = client.get_model_config(model, as_json=True, headers=self.headers or None,
                                             client_timeout=timeout)
        except InferenceServerException as exc:
            self._release(client)
            raise map_grpc_error(exc, self.url, model) from None
        self._release(client)
        info = _declared_inputs(config)
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
            try:
                client.start_stream(callback=lambda result, error: done.put(error), stream_timeout=timeout)
                client.async_stream_infer(engine, _stop_inputs(request.request_id, batch), request_id=request_id,
                                          enable_empty_final_response=True)
                error = done.get(timeout=max(deadline - time.perf_counter(), 0.01))
                return error is None
            finally:
                client.stop_stream(cancel_requests=True)
                self._release(client, healthy=False)
        except Exception:  # noqa: BLE001 - the request is being abandoned anyway
            return False

    def responses(self, model: str, request: WireRequest, deadline: float | None) -> Iterator[Piece]:
        """Yield each response's text (bytes; ``None`` for one without text) until the final one."""
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        declared, batch = self._model_info(model, deadline)
        inputs = _infer_inputs(request.for_model(model, declared), batch)
        client = self._acquire()
        responses: queue.SimpleQueue = queue.SimpleQueue()
        healthy = True

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
                try:
                    result, error = responses.get(timeout=rem)
                except queue.Empty:
                    raise RequestTimeoutError(
                        f"request to model {model!r} at {self.url} exceeded its deadline"
                    ) from None
                if error is not None:
                    healthy = False
                    raise map_grpc_error(error, self.url, model)
                piece, final = _payload(result)
                yield piece
                if final:
                    return
        finally:
            # Cancels the request on the server when it is still running (closed early, timeout, error).
            client.stop_stream(cancel_requests=True)
            self._release(client, healthy)


def _stop_inputs(request_id: str, batch: bool):
    from koserve.client.wire import engine_stop_request  # noqa: PLC0415

    return _infer_inputs(list(engine_stop_request(request_id).tensors.values()), batch)


class AsyncGrpcTransport:
    """asyncio gRPC transport on ``tritonclient.grpc.aio`` (one client, one stream per request)."""

    protocol = "grpc"

    def __init__(self, url: str, *, connect_timeout: float = 5.0, headers: dict[str, str] | None = None):
        self.url = url
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
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
            config = await client.get_model_config(model, as_json=True, headers=self.headers or None,
                                                   client_timeout=timeout)
        except InferenceServerException as exc:
            raise map_grpc_error(exc, self.url, model) from None
        info = _declared_inputs(config)
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
            try:
                async def drain() -> bool:
                    ok = True
                    async for _result, error in call:
                        ok = ok and error is None
                    return ok

                return await asyncio.wait_for(drain(), timeout)
            finally:
                call.cancel()
        except Exception:  # noqa: BLE001
            return False

    async def responses(self, model: str, request: WireRequest, deadline: float | None
                        ) -> AsyncIterator[Piece]:
        import grpc  # noqa: PLC0415
        from tritonclient.utils import InferenceServerException  # noqa: PLC0415

        declared, batch = await self._model_info(model, deadline)
        inputs = _infer_inputs(request.for_model(model, declared), batch)
        client = self._get_client()

        async def one_request():
            yield {"model_name": model, "inputs": inputs, "request_id": request.request_id}

        timeout_msg = f"request to model {model!r} at {self.url} exceeded its deadline"
        try:
            call = client.stream_infer(one_request(), stream_timeout=_remaining(deadline),
                                       headers=self.headers or None)
        except InferenceServerException as exc:
            raise map_grpc_error(exc, self.url, model) from None
        try:
            while True:
                rem = _remaining(deadline)
                if rem is not None and rem <= 0:
                    raise RequestTimeoutError(timeout_msg)
                try:
                    result, error = await asyncio.wait_for(call.__anext__(), rem)
                except StopAsyncIteration:
                    return
                except asyncio.TimeoutError:
                    raise RequestTimeoutError(timeout_msg) from None
                except (InferenceServerException, grpc.RpcError) as exc:
                    raise map_grpc_error(exc, self.url, model) from None
                if error is not None:
                    raise map_grpc_error(error, self.url, model)
                piece, final = _payload(result)
                yield piece
                if final:
                    return
        finally:
            call.cancel()
