"""The OpenAI-compatible gateway: FastAPI in front of Triton, one :class:`AsyncChatClient` per served model.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (both with ``stream: true`` as server-sent
events), ``GET /v1/models``, ``GET /health`` (503 until every model's Triton answers ready), ``GET /metrics``
(Prometheus). Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

A model may have several Triton addresses (replicas): :mod:`koserve.gateway.replicas` picks the one with the fewest
requests in flight and fails over before the first token; :mod:`koserve.gateway.drain` drains on SIGTERM.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from koserve import __version__
from koserve.client import AsyncChatClient, ChatResult
from koserve.client.aio import AsyncChatStream
from koserve.chat import PromptInjectionError, check_prompt
from koserve.client.errors import (
    ClientError,
    InvalidParameterError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
)
from koserve.errors import ConfigError, InvalidRequestError, KoserveError
from koserve.gateway.config import NO_TOKENIZER, GatewayConfig, ModelRoute
from koserve.gateway.drain import DrainMiddleware, DrainState
from koserve.gateway.metrics import Metrics
from koserve.gateway.replicas import DEFAULT_HEALTH_PERIOD_S, Replica, ReplicaSet
from koserve.gateway.schemas import ChatCompletionRequest, CompletionRequest, UnsupportedParameterError
from koserve.guided.openai import (
    check_tools,
    guide_from_response_format,
    parse_tool_call,
    tool_choice_mode,
    tool_guide,
    tool_messages,
)
from koserve.profiles import load_profile

log = logging.getLogger("koserve.gateway")


# Triton reports in-band stream errors without a status code. koserve's serving side words request problems
# (InvalidRequestError) like these; anything else from the server is a 502.
_REQUEST_PROBLEM = re.compile(
    r"^invalid request|exceeds|must be|must not|is required|is not valid|is empty|the limit is|too long|not supported"
    r"|max (?:input|sequence|output) length|cannot be compiled|did not compile within",
    re.IGNORECASE,
)
_ENSEMBLE_PREFIX = re.compile(r"^in ensemble '[^']*', ")

# Triton input names in koserve's error messages -> the OpenAI parameter a caller set
_TENSOR_PARAMS = {
    "max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
    "repetition_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "min_length": "min_tokens", "random_seed": "seed",
    "stop_words": "stop", "seed": "seed", "min_tokens": "min_tokens", "stop": "stop",
    "guided_decoding_guide": "response_format", "guided_decoding_guide_type": "response_format",
}
_NAMED = re.compile(r"^(?:inputs? )?'?([a-z_]+)'?")


def server_error_param(message: str, prompt_param: str | None) -> str | None:
    """Which request parameter a koserve serving-side error is about (OpenAI's ``param``), when it says."""
    if message.startswith(("prompt is", "text_input")):
        return prompt_param
    if "max_tokens" in message:
        return "max_tokens"
    m = _NAMED.match(message)
    return _TENSOR_PARAMS.get(m.group(1)) if m else None


class GatewayError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_body(message: str, type_: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                   param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status)


def as_gateway_error(exc: BaseException, prompt_param: str | None = None) -> GatewayError:
    """What a koserve/client failure means for an API caller (``prompt_param``: ``messages`` or ``prompt``)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, RequestTimeoutError):
        return GatewayError(504, f"the model did not answer in time: {exc}", type_="server_error", code="timeout")
    if isinstance(exc, ServerUnavailableError):
        return GatewayError(503, f"the model server is unavailable: {exc}", type_="server_error",
                            code="backend_unavailable")
    if isinstance(exc, ServerError):
        message = _ENSEMBLE_PREFIX.sub("", exc.server_message)
        if str(exc.status or "") in ("INVALID_ARGUMENT", "400") or _REQUEST_PROBLEM.search(message):
            return GatewayError(400, message, code="invalid_request", param=server_error_param(message, prompt_param))
        return GatewayError(502, f"the model server failed: {message}", type_="server_error", code="backend_error")
    if isinstance(exc, InvalidParameterError):
        return GatewayError(400, str(exc), code="invalid_request", param=exc.param)
    if isinstance(exc, PromptInjectionError):
        return GatewayError(400, str(exc), code="prompt_injection", param=prompt_param)
    if isinstance(exc, (InvalidRequestError, ValueError)):
        return GatewayError(400, str(exc), code="invalid_request", param=prompt_param)
    if isinstance(exc, (ClientError, KoserveError)):
        return GatewayError(502, str(exc), type_="server_error", code="backend_error")
    return GatewayError(500, "internal error in the gateway", type_="server_error", code="internal_error")


def caller_error(exc: BaseException, prompt_param: str, max_tokens_param: str = "max_tokens") -> GatewayError:
    """:func:`as_gateway_error` with ``param`` spelled as the caller did (``max_completion_tokens``, ...)."""
    err = as_gateway_error(exc, prompt_param)
    if err.param == "max_tokens":
        err.param = max_tokens_param
    return err


@dataclass
class Backend:
    route: ModelRoute
    client: AsyncChatClient  # the first replica's: profile, tokenizer, request preparation
    created: int
    replicas: ReplicaSet | None = None


def resolve_tokenizer(route: ModelRoute) -> str | None:
    """The route's tokenizer folder: ``tokenizer=`` when given (``none``: go without), else the real tokenizer of
    the profile's family prepared by ``koserve setup fixtures`` (found by :func:`koserve.fixtures.cache_dir`'s
    rule, whatever the working directory). The tokenizer counts ``usage.prompt_tokens`` and lets the injection
    check look at token ids; without one prompt_tokens is 0 and the check works on normalised text only."""
    if route.tokenizer == NO_TOKENIZER:
        log.info("model %s: no tokenizer (tokenizer=none): usage.prompt_tokens will be 0", route.name)
        return None
    if route.tokenizer:
        return route.tokenizer
    from koserve.errors import ConfigError  # noqa: PLC0415
    from koserve.fixtures import tokenizer_dir  # noqa: PLC0415

    family = load_profile(route.profile).tokenizer_family
    try:
        path = str(tokenizer_dir(family))
    except ConfigError as exc:
        log.warning("model %s: no tokenizer: %s; usage.prompt_tokens will be 0 — give the model's tokenizer folder "
                    "with tokenizer=DIR (or tokenizer=none to silence this)", route.name, exc)
        return None
    log.info("model %s: %s tokenizer from %s", route.name, family, path)
    return path


def route_target(route: ModelRoute, tokenizer: object | None) -> str:
    """The Triton model a route's requests go to: its ``target``, else ``engine`` (token ids straight to the engine:
    the fastest path, docs/benchmarks.md) when it has a gRPC address and a tokenizer, else ``ensemble``."""
    if route.target is not None:
        return route.target
    return "engine" if route.grpc and tokenizer is not None else "ensemble"


def route_clients(route: ModelRoute, config: GatewayConfig) -> list[AsyncChatClient]:
    """One client per replica of ``route``, sharing one tokenizer."""
    path = resolve_tokenizer(route)
    tokenizer = None
    if path is not None:
        from koserve.text.tokenizer import load_tokenizer  # noqa: PLC0415

        tokenizer = load_tokenizer(path)
    target = route_target(route, tokenizer)
    log.info("model %s: requests go to %s", route.name, target)
    options = dict(tokenizer=tokenizer, timeout=config.request_timeout, retries=config.retries)
    if target != "engine":
        return [AsyncChatClient(url, route.profile, protocol=route.protocol, model=target, **options)
                for url in route.urls]
    from koserve.client._base import infer_protocol  # noqa: PLC0415
    from koserve.client._grpc import AsyncGrpcTransport  # noqa: PLC0415
    from koserve.frontend import AsyncEngineTransport  # noqa: PLC0415
    from koserve.triton_models.params import ServingLimits  # noqa: PLC0415

    if tokenizer is None:
        raise ConfigError(f"model {route.name}: target engine tokenizes in the gateway and needs a tokenizer "
                          "(tokenizer=DIR, or `koserve setup fixtures` for the fixture ones)")
    profile = load_profile(route.profile)
    limits = None
    if route.max_input_len is not None:
        limits = ServingLimits(max_batch_size=0, max_input_len=route.max_input_len, max_seq_len=route.max_seq_len)
    clients = []
    for url in route.urls:
        grpc = AsyncGrpcTransport(infer_protocol(url, "grpc")[0])
        transport = AsyncEngineTransport(grpc, profile, tokenizer, limits=limits)
        clients.append(AsyncChatClient(url, profile, model="engine", transport=transport, **options))
    return clients


class _Guard:
    """ASGI middleware: API keys on ``/v1/*`` and the request body size limit (before any parsing)."""

    def __init__(self, app: Callable, *, api_keys: list[str], max_bytes: int):
        self.app = app
        self.keys = [k.encode() for k in api_keys]
        self.max_bytes = max_bytes

    async def _reply(self, send: Callable, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    def _authorized(self, headers: dict[bytes, bytes]) -> tuple[bool, str]:
        auth = headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if not auth or scheme.lower() != b"bearer" or not token.strip():
            return False, "missing API key: send it as 'Authorization: Bearer <key>'"
        token = token.strip()
        ok = False
        for key in self.keys:
            ok |= hmac.compare_digest(token, key)
        return ok, "incorrect API key provided"

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.keys and scope["path"].startswith("/v1"):
            ok, why = self._authorized(headers)
            if not ok:
                await self._reply(send, 401, error_body(why, "invalid_request_error", "invalid_api_key"))
                return
        too_large = error_body(f"request body is larger than the limit of {self.max_bytes} bytes",
                               "invalid_request_error", "request_too_large")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.max_bytes:
                    await self._reply(send, 413, too_large)
                    return
            except ValueError:
                await self._reply(send, 400, error_body("invalid Content-Length header"))
                return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reply(send, 413, too_large)


class _TooLarge(Exception):
    pass


@dataclass
class StructuredOutput:
    """A chat request's ``response_format`` / ``tools`` as client parameters and the messages the model sees."""

    messages: list[dict]
    params: dict[str, Any]
    functions: list[dict] | None  # the tools when the answer may be a call (tool_choice other than none)


def structured_output(body: ChatCompletionRequest, messages: list[dict]) -> StructuredOutput:
    """Guides for ``response_format`` and ``tools`` (koserve.guided.openai); 400 naming the field otherwise."""
    param = "response_format"
    try:
        guide = guide_from_response_format(body.response_format)
        functions, mode, name = None, "none", None
        if body.tools:
            param = "tools"
            functions = check_tools(body.tools)
            param = "tool_choice"
            mode, name = tool_choice_mode(body.tool_choice, functions)
            call_guide = tool_guide(functions, mode, name)
            if call_guide is not None:
                if guide is not None:
                    raise InvalidRequestError("response_format cannot be combined with tool_choice required or "
                                              "a named function (the answer is then a tool call)")
                guide = call_guide
        param = "messages"
        shown = functions if mode != "none" else None
        messages = tool_messages(messages, shown)
    except InvalidRequestError as exc:
        raise GatewayError(400, str(exc), param=param, code="invalid_request") from None
    params = {} if guide is None else {"json_schema": guide.guide} if guide.guide_type == "json_schema" else {
        "response_format": {"type": "json_object"}}
    return StructuredOutput(messages, params, shown)


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def create_app(config: GatewayConfig) -> FastAPI:
    """The gateway for ``config`` (clients are created now; they connect on first use)."""
    metrics = Metrics()
    backends: dict[str, Backend] = {}
    for route in config.models:
        clients = route_clients(route, config)
        # retries: after every replica was unreachable before a first response (with the client's backoff)
        replicas = ReplicaSet([Replica(url, c) for url, c in zip(route.urls, clients)], retries=config.retries)
        backends[route.name] = Backend(route, clients[0], int(time.time()), replicas)
    drain = DrainState()

    from contextlib import asynccontextmanager  # noqa: PLC0415

    async def watch_replicas() -> None:
        """Every health period: each replica's model-ready (only models with several replicas)."""
        import asyncio  # noqa: PLC0415

        sets = [b.replicas for b in backends.values() if b.replicas and len(b.replicas.replicas) > 1]
        while sets:
            await asyncio.gather(*(rs.check() for rs in sets), return_exceptions=True)
            await asyncio.sleep(DEFAULT_HEALTH_PERIOD_S)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import asyncio  # noqa: PLC0415

        watcher = asyncio.get_running_loop().create_task(watch_replicas())
        yield
        watcher.cancel()
        for b in backends.values():
            for r in b.replicas.replicas:
                await r.client.close()

    app = FastAPI(title="koserve gateway", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config = config
    app.state.metrics = metrics
    app.state.backends = backends
    app.state.drain = drain

    # -- errors ------------------------------------------------------------------------------------------
    @app.exception_handler(GatewayError)
    async def _gateway_error(_r: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = str(first.get("msg", "invalid request"))
        if first.get("type") == "json_invalid":
            msg = "the request body is not valid JSON"
        return error_response(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(Exception)
    async def _unexpected(_r: Request, exc: Exception) -> JSONResponse:
        err = as_gateway_error(exc)
        if err.status >= 500:
            log.exception("request failed")
        return error_response(err.status, err.message, err.type, err.code, err.param)

    def backend_for(name: str) -> Backend:
        b = backends.get(name)
        if b is None:
            raise GatewayError(404, f"the model {name!r} does not exist; available: {', '.join(backends)}",
                               code="model_not_found", param="model")
        return b

    async def parse(request: Request, schema: type) -> Any:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise GatewayError(400, "the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise GatewayError(400, "the request body must be a JSON object", code="invalid_request")
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            msg = first["msg"].removeprefix("Value error, ")
            raise GatewayError(400, f"{param}: {msg}" if param else msg, param=param,
                               code="invalid_request") from None
        try:
            body.check_supported()
        except UnsupportedParameterError as exc:
            raise GatewayError(400, str(exc), param=exc.param, code="unsupported_parameter") from None
        return body

    def check_max_tokens(b: Backend, params: dict[str, Any], param: str = "max_tokens") -> None:
        cap = b.route.max_tokens
        if cap is not None and params.get("max_tokens") is not None and params["max_tokens"] > cap:
            raise GatewayError(400, f"{param} is {params['max_tokens']}; the limit for {b.route.name} is {cap}",
                               param=param, code="invalid_request")
        if cap is not None and params.get("max_tokens") is None:
            params["max_tokens"] = min(cap, b.client.profile.generation.max_new_tokens)

    def open_on_replicas(b: Backend, prepared: Any, stream: bool) -> Any:
        """The request on the replica with the fewest in flight, sent again to another one if it is refused before
        its first response (koserve.gateway.replicas): a stream, or an awaitable result."""
        def open_stream(client: AsyncChatClient) -> AsyncChatStream:
            return AsyncChatStream(client, prepared)

        return b.replicas.stream(open_stream) if stream else b.replicas.complete(open_stream)

    def usage(result: ChatResult) -> dict[str, int]:
        p, c = result.prompt_tokens or 0, result.completion_tokens or 0
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def finish_reason(result: ChatResult) -> str:
        return "length" if result.finish_reason == "length" else "stop"

    async def run(endpoint: str, b: Backend, stream_obj: Any, include_usage: bool,
                  chunk: Callable[[str | None, str | None, bool], dict | None], whole: Callable[[ChatResult], dict],
                  max_tokens_param: str = "max_tokens",
                  tail: Callable[[ChatResult], tuple[list[dict], str]] | None = None) -> Response:
        """Serve one request: ``stream_obj`` is an AsyncChatStream (SSE) or an awaitable ChatResult. ``chunk`` may
        hold a delta back (None); ``tail`` gives the chunks and finish reason sent once the answer is complete."""
        name = b.route.name
        prompt_param = "messages" if endpoint == "chat" else "prompt"

        started = time.perf_counter()
        metrics.admitted(name)
        if not hasattr(stream_obj, "__anext__"):
            metrics.first_token(name)  # a whole answer shows no first token here: running from the start
            try:
                result = await stream_obj
            except BaseException as exc:
                err = caller_error(exc, prompt_param, max_tokens_param)
                metrics.finished(name, endpoint, err.status, started, None, streamed=True)
                raise err from None
            metrics.finished(name, endpoint, 200, started, result, streamed=True)
            return JSONResponse(whole(result))
        # Streaming: wait for the first delta so that a failure to start is a proper HTTP error.
        try:
            first = await stream_obj.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            await stream_obj.aclose()
            err = caller_error(exc, prompt_param, max_tokens_param)
            metrics.finished(name, endpoint, err.status, started, None, streamed=False)
            raise err from None
        metrics.first_token(name)

        async def events() -> AsyncIterator[bytes]:
            status = 200
            result = None
            try:
                yield _sse(chunk(None, None, True))
                if first and (c := chunk(first, None, False)) is not None:
                    yield _sse(c)
                async for delta in stream_obj:
                    if (c := chunk(delta, None, False)) is not None:
                        yield _sse(c)
                result = stream_obj.result
                extra, reason = tail(result) if tail is not None else ([], finish_reason(result))
                for c in extra:
                    yield _sse(c)
                final = chunk(None, reason, False)
                yield _sse(final)
                if include_usage:
                    yield _sse({**final, "choices": [], "usage": usage(result)})
                yield b"data: [DONE]\n\n"
            except Exception as exc:  # noqa: BLE001 - headers are sent: report in-band, as OpenAI does
                err = caller_error(exc, prompt_param, max_tokens_param)
                status = err.status
                yield _sse(error_body(err.message, err.type, err.code, err.param))
            except BaseException:  # client went away (cancelled): stop the generation on the server
                status = 499
                raise
            finally:
                await stream_obj.aclose()
                if result is None and status == 499:
                    try:
                        result = stream_obj.result  # cancelled: what was generated still counts
                    except Exception:  # noqa: BLE001
                        result = None
                metrics.finished(name, endpoint, status, started, result, streamed=True)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- routes ------------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatCompletionRequest = await parse(request, ChatCompletionRequest)
        b = backend_for(body.model)
        if len(body.messages) > config.max_messages:
            raise GatewayError(400, f"{len(body.messages)} messages; the limit is {config.max_messages}",
                               param="messages", code="invalid_request")
        try:
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                         "tool_calls": m.tool_calls, "name": m.name, "tool_call_id": m.tool_call_id}
                        for m in body.messages]
        except ValueError as exc:
            raise GatewayError(400, str(exc), param="messages", code="invalid_request") from None
        structured = structured_output(body, messages)
        messages = structured.messages
        params = {**body.sampling(), **structured.params}
        tokens_param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        check_max_tokens(b, params, tokens_param)
        try:  # prepared once (a bad request fails here); any replica's client sends it
            prepared = b.client.prepare_chat(messages, params, stream=True if body.stream else None)
        except (InvalidRequestError, KoserveError) as exc:
            raise caller_error(exc, "messages", tokens_param) from None
        stream_obj = open_on_replicas(b, prepared, body.stream)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: str | None, reason: str | None, first: bool, d: dict | None = None) -> dict | None:
            if d is None:
                if delta is not None and structured.functions:
                    return None  # with tools, the answer is known to be text or a call only once complete
                d = {"role": "assistant", "content": ""} if first else (
                    {"content": delta} if delta is not None else {})
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "choices": [{"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}]}

        def answer(result: ChatResult) -> tuple[dict | None, str]:
            call = parse_tool_call(result.text, structured.functions) if structured.functions else None
            if call is not None:
                return call, "tool_calls"
            return None, finish_reason(result)

        def whole(result: ChatResult) -> dict:
            call, reason = answer(result)
            message: dict[str, Any] = {"role": "assistant", "content": result.text}
            if call is not None:
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
            return {"id": cid, "object": "chat.completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "message": message, "finish_reason": reason, "logprobs": None}],
                    "usage": usage(result)}

        def tail(result: ChatResult) -> tuple[list[dict], str]:
            call, reason = answer(result)
            if call is not None:
                d = {"tool_calls": [{"index": 0, **call}]}
            elif result.text:
                d = {"content": result.text}
            else:
                return [], reason
            return [chunk(None, None, False, d)], reason

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await run("chat", b, stream_obj, include_usage, chunk, whole, tokens_param,
                         tail if structured.functions else None)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await parse(request, CompletionRequest)
        b = backend_for(body.model)
        try:
            prompt = body.prompt_text()
        except ValueError as exc:
            raise GatewayError(400, str(exc), param="prompt", code="invalid_request") from None
        if not config.allow_raw_prompts:
            try:
                check_prompt(b.client.profile.chat.format, prompt, tokenizer=b.client.tokenizer)
            except InvalidRequestError as exc:
                raise GatewayError(400, f"{exc} (this gateway applies the chat-format policy to completions "
                                   "prompts: allow_raw_prompts is off)", param="prompt",
                                   code="prompt_injection") from None
        params = body.sampling()
        check_max_tokens(b, params)
        try:
            prepared = b.client.prepare_generate(prompt, params, stream=True if body.stream else None)
        except (InvalidRequestError, KoserveError) as exc:
            raise caller_error(exc, "prompt") from None
        stream_obj = open_on_replicas(b, prepared, body.stream)
        cid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: str | None, reason: str | None, first: bool) -> dict:
            return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": "" if first else (delta or ""), "finish_reason": reason,
                                 "logprobs": None}]}

        def whole(result: ChatResult) -> dict:
            return {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": result.text, "finish_reason": finish_reason(result),
                                 "logprobs": None}],
                    "usage": usage(result)}

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await run("completions", b, stream_obj, include_usage, chunk, whole)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": b.created, "owned_by": "koserve",
             "profile": b.route.profile, "display_name": b.client.profile.display_name}
            for name, b in backends.items()
        ]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict:
        b = backend_for(name)
        return {"id": name, "object": "model", "created": b.created, "owned_by": "koserve"}

    @app.get("/health")
    async def health() -> JSONResponse:
        if drain.draining:
            return JSONResponse({"status": "draining", "in_flight": drain.in_flight}, status_code=503,
                                headers={"Retry-After": str(drain.retry_after_s)})
        states = {}
        replicas = {}
        for name, b in backends.items():
            ready = [await r.client.is_ready(timeout=2.0) for r in b.replicas.replicas]
            states[name] = "ready" if any(ready) else "unavailable"
            if len(ready) > 1:
                replicas[name] = {r.url: {"ready": ok, "in_flight": r.in_flight, "served": r.served,
                                          "refused": r.refused} for r, ok in zip(b.replicas.replicas, ready)}
        ok = all(s == "ready" for s in states.values())
        body = {"status": "ok" if ok else "degraded", "models": states}
        if replicas:
            body["replicas"] = replicas
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    return _wrap(app, config)


def _wrap(app: FastAPI, config: GatewayConfig) -> FastAPI:
    app.add_middleware(_Guard, api_keys=config.api_keys, max_bytes=config.max_request_bytes)
    app.add_middleware(DrainMiddleware, state=app.state.drain)  # outermost: counts and refuses before anything else
    return app
