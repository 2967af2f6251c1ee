"""HTTP transport: Triton's ``generate`` (one response) and ``generate_stream`` (server-sent events), via httpx.

Events are read with httpx-sse, which splits lines only where the SSE format does (CR, LF, CRLF): a model's text may
hold U+2028, U+2029 or U+0085 raw in Triton's JSON, and a reader that splits on every Unicode line boundary (httpx's
``iter_lines``) breaks such an event in two.

Closing the response closes the connection, which makes Triton cancel the request. Errors come back three ways, all
raised as :class:`ServerError` with the server's message: a non-200 JSON body (``generate``), a non-200 event stream
whose event is ``{"error": ...}`` (``generate_stream`` refusing a request, e.g. a prompt over the engine's limit: the
first response's error sets the HTTP status, and its JSON is framed as an event, ``data: {...}``, by
``GenerateRequestClass::InferResponseComplete`` / ``AddErrorJson`` in Triton's ``src/http_server.cc``, the same at
v2.51.0 and v2.68.0 = 26.04), and an ``{"error": ...}`` event in the middle of a stream. ``/generate`` answers HTTP
200 with ``{"error": ...}`` when the model sends more than one response.
"""

from __future__ import annotations

import json
import time
from typing import Any, AsyncGenerator, Generator
from urllib.parse import quote

import httpx
from httpx_sse import EventSource

from koserve.client.errors import ClientError, RequestTimeoutError, ServerError, ServerUnavailableError
from koserve.client.result import Piece, token_count
from koserve.client.wire import WireRequest

_MULTI_RESPONSE_HINT = (
    " (the model streams several responses; ask for server streaming instead, e.g. server_streaming=True)"
)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.perf_counter()


def _timeout(deadline: float | None, connect_timeout: float) -> httpx.Timeout:
    rem = _remaining(deadline)
    if rem is None:
        return httpx.Timeout(None, connect=connect_timeout)
    rem = max(rem, 0.001)
    return httpx.Timeout(rem, connect=min(connect_timeout, rem))


def error_text(body: bytes | str) -> str:
    """The server's message in an error body: ``{"error": ...}``'s value, else the text itself (cut to 500)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "(empty body)"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return text.strip()[:500]


def _is_event_stream(resp: httpx.Response) -> bool:
    return resp.headers.get("content-type", "").partition(";")[0].strip() == "text/event-stream"


def _piece(obj: dict[str, Any]) -> Piece:
    """The text and token count of one JSON response or event."""
    text = obj.get("text_output")
    if isinstance(text, list):
        text = "".join(map(str, text))
    return Piece(text, token_count(obj.get("num_output_tokens")))


def _stop_body(request_id: str) -> dict[str, Any]:
    from koserve.client.wire import engine_stop_request  # noqa: PLC0415

    request = engine_stop_request(request_id)
    body = request.json_body(list(request.tensors.values()))
    body["input_ids"] = [0]
    return body


def _restricted(resp: httpx.Response) -> bool:
    """Triton refused the call for a missing restricted-API header (``--http-restricted-api``; the Helm chart
    restricts model-config): the model's metadata, which stays open, names its inputs too."""
    return resp.status_code == 403 and b"is restricted" in resp.content


class _Common:
    protocol = "http"
    # Closing the connection cancels the request in Triton, but an ensemble's cancellation does not reach its
    # engine step: the stream stops the engine by request id.
    stops_on_close = False

    def __init__(self, url: str, *, connect_timeout: float = 5.0, headers: dict[str, str] | None = None):
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url = url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
        self._models: dict[str, set[str]] = {}

    def _path(self, model: str, what: str) -> str:
        return f"/v2/models/{quote(model, safe='')}/{what}"

    def _metadata_path(self, model: str) -> str:
        return f"/v2/models/{quote(model, safe='')}"

    def _map_transport_error(self, exc: httpx.HTTPError, model: str) -> ClientError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return ServerUnavailableError(f"cannot reach Triton at {self.url} (HTTP): {exc or type(exc).__name__}")
        if isinstance(exc, httpx.TimeoutException):
            return RequestTimeoutError(f"request to model {model!r} at {self.url} exceeded its deadline")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return ServerUnavailableError(f"connection to Triton at {self.url} was lost: {exc or type(exc).__name__}")
        return ClientError(f"HTTP request to {self.url} failed: {type(exc).__name__}: {exc}")

    def _failure(self, model: str, status: int, message: str) -> ClientError:
        """A non-200 answer as an error (502/503: the server is unavailable)."""
        if status in (502, 503):
            return ServerUnavailableError(f"Triton at {self.url} is unavailable (HTTP {status}): {message}")
        return ServerError(f"Triton at {self.url}, model {model!r}: {message}", status=status,
                           server_message=message)

    def _config_result(self, model: str, resp: httpx.Response) -> set[str]:
        """Declared input names from a model's config, or from its metadata where the config is restricted."""
        if resp.status_code != 200:
            raise self._failure(model, resp.status_code, error_text(resp.content))
        config = resp.json()
        names = {i["name"] for i in config.get("input", config.get("inputs", []))}
        self._models[model] = names
        return names

    def _check_deadline(self, deadline: float | None, model: str) -> None:
        rem = _remaining(deadline)
        if rem is not None and rem <= 0:
            raise RequestTimeoutError(f"request to model {model!r} at {self.url} exceeded its deadline")

    def _event(self, model: str, status: int, data: str) -> Piece:
        """One event of a ``generate_stream`` answer with HTTP ``status``: its piece, or its error raised."""
        try:
            obj: Any = json.loads(data)
        except ValueError:
            raise ServerError(f"Triton at {self.url} sent an event that is not JSON: {data[:200]!r}") from None
        if isinstance(obj, dict) and "error" in obj:
            message = str(obj["error"])
            if status != 200:
                raise self._failure(model, status, message)
            raise ServerError(f"Triton at {self.url}, model {model!r}: {message}", server_message=message)
        if not isinstance(obj, dict):
            raise ServerError(f"Triton at {self.url} sent an unexpected event: {data[:200]!r}")
        return _piece(obj)

    def _events_ended(self, model: str, status: int) -> None:
        """After the last event: a failed answer whose events named no error is an error all the same."""
        if status != 200:
            raise self._failure(model, status, "(the server sent no error event)")

    def _single(self, model: str, status: int, body: bytes) -> Piece:
        if status != 200:
            raise self._failure(model, status, error_text(body))
        try:
            obj = json.loads(body)
        except ValueError:
            raise ServerError(f"Triton at {self.url} answered with a body that is not JSON: {body[:200]!r}") from None
        if isinstance(obj, dict) and "error" in obj:
            msg = str(obj["error"])
            hint = _MULTI_RESPONSE_HINT if "exactly 1 response" in msg else ""
            raise ServerError(f"Triton at {self.url}, model {model!r}: {msg}{hint}", status=status, server_message=msg)
        return _piece(obj) if isinstance(obj, dict) else Piece(None)


class HttpTransport(_Common):
    """Synchronous HTTP transport (thread-safe; httpx keeps a connection pool)."""

    def __init__(self, url: str, **kw: Any):
        super().__init__(url, **kw)
        self._client = httpx.Client(base_url=self.url, headers=self.headers, timeout=httpx.Timeout(None))

    def close(self) -> None:
        self._client.close()

    def _model_inputs(self, model: str, deadline: float | None) -> set[str]:
        if model in self._models:
            return self._models[model]
        self._check_deadline(deadline, model)
        t = _timeout(deadline, self.connect_timeout)
        timeout = httpx.Timeout(t.read or self.connect_timeout, connect=t.connect)
        try:
            resp = self._client.get(self._path(model, "config"), timeout=timeout)
            if _restricted(resp):
                resp = self._client.get(self._metadata_path(model), timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._map_transport_error(exc, model) from None
        return self._config_result(model, resp)

    def ready(self, model: str, timeout: float = 2.0) -> bool:
        try:
            return self._client.get(self._path(model, "ready"), timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_engine(self, engine: str, request_id: str, timeout: float = 2.0) -> bool:
        """Ask ``engine`` (``tensorrt_llm``) to stop ``request_id``; best effort, never raises."""
        body = _stop_body(request_id)
        try:
            resp = self._client.post(self._path(engine, "generate_stream"), json=body, timeout=timeout)
            return resp.status_code == 200 and b'"error"' not in resp.content
        except Exception:  # noqa: BLE001
            return False

    def responses(self, model: str, request: WireRequest, deadline: float | None
                  ) -> Generator[Piece, None, None]:
        declared = self._model_inputs(model, deadline)
        body = request.json_body(request.for_model(model, declared))
        what = "generate_stream" if request.stream else "generate"
        try:
            with self._client.stream("POST", self._path(model, what), json=body,
                                     timeout=_timeout(deadline, self.connect_timeout)) as resp:
                if not (request.stream and _is_event_stream(resp)):
                    yield self._single(model, resp.status_code, resp.read())
                    return
                for event in EventSource(resp).iter_sse():
                    self._check_deadline(deadline, model)
                    yield self._event(model, resp.status_code, event.data)
                self._events_ended(model, resp.status_code)
        except httpx.HTTPError as exc:
            raise self._map_transport_error(exc, model) from None


class AsyncHttpTransport(_Common):
    """asyncio HTTP transport."""

    def __init__(self, url: str, **kw: Any):
        super().__init__(url, **kw)
        self._client = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=httpx.Timeout(None))

    async def close(self) -> None:
        await self._client.aclose()

    async def _model_inputs(self, model: str, deadline: float | None) -> set[str]:
        if model in self._models:
            return self._models[model]
        self._check_deadline(deadline, model)
        t = _timeout(deadline, self.connect_timeout)
        timeout = httpx.Timeout(t.read or self.connect_timeout, connect=t.connect)
        try:
            resp = await self._client.get(self._path(model, "config"), timeout=timeout)
            if _restricted(resp):
                resp = await self._client.get(self._metadata_path(model), timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._map_transport_error(exc, model) from None
        return self._config_result(model, resp)

    async def ready(self, model: str, timeout: float = 2.0) -> bool:
        try:
            return (await self._client.get(self._path(model, "ready"), timeout=timeout)).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop_engine(self, engine: str, request_id: str, timeout: float = 2.0) -> bool:
        body = _stop_body(request_id)
        try:
            resp = await self._client.post(self._path(engine, "generate_stream"), json=body, timeout=timeout)
            return resp.status_code == 200 and b'"error"' not in resp.content
        except Exception:  # noqa: BLE001
            return False

    async def responses(self, model: str, request: WireRequest, deadline: float | None
                        ) -> AsyncGenerator[Piece, None]:
        declared = await self._model_inputs(model, deadline)
        body = request.json_body(request.for_model(model, declared))
        what = "generate_stream" if request.stream else "generate"
        try:
            async with self._client.stream("POST", self._path(model, what), json=body,
                                           timeout=_timeout(deadline, self.connect_timeout)) as resp:
                if not (request.stream and _is_event_stream(resp)):
                    yield self._single(model, resp.status_code, await resp.aread())
                    return
                events = EventSource(resp).aiter_sse()
                try:
                    async for event in events:
                        self._check_deadline(deadline, model)
                        yield self._event(model, resp.status_code, event.data)
                finally:
                    await events.aclose()
                self._events_ended(model, resp.status_code)
        except httpx.HTTPError as exc:
            raise self._map_transport_error(exc, model) from None
