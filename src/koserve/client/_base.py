"""What the sync and async clients share: settings, request preparation, retry policy, result building."""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Mapping, overload

from koserve.chat import USE_DEFAULT, render_prompt
from koserve.client.params import PARAM_NAMES, SamplingParams, resolve_params
from koserve.client.result import ChatResult, ResponseAssembler
from koserve.client.stream_state import StreamState
from koserve.client.wire import WireRequest, build_request
from koserve.errors import InvalidRequestError
from koserve.profiles import ModelProfile, load_profile

if TYPE_CHECKING:
    from koserve.client.transport import AsyncTransport, Transport
    from koserve.text.tokenizer import TextTokenizer

Protocol = Literal["grpc", "http"]
MODELS = ("ensemble", "tensorrt_llm_bls")
DIRECT = "engine"  # model="engine": tokenize and detokenize here, token ids straight to the engine (koserve.frontend)
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

DEFAULT_GRPC_URL = "127.0.0.1:8001"
DEFAULT_HTTP_URL = "http://127.0.0.1:8000"


def infer_protocol(url: str, protocol: str | None) -> tuple[str, Protocol]:
    """Normalise ``url`` and pick the protocol: explicit, else ``http(s)://`` → HTTP, anything else → gRPC."""
    if protocol is not None and protocol not in ("grpc", "http"):
        raise InvalidRequestError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequestError("url must be a non-empty string such as 127.0.0.1:8001")
    url = url.strip()
    if url.startswith("grpc://"):
        url = url[len("grpc://"):]
        if protocol == "http":
            raise InvalidRequestError(f"url {url!r} is a grpc:// URL but protocol is 'http'")
        return url.rstrip("/"), "grpc"
    if url.startswith(("http://", "https://")):
        if protocol == "grpc":
            url = url.split("://", 1)[1]
            return url.rstrip("/"), "grpc"
        return url.rstrip("/"), "http"
    if protocol == "http":
        return "http://" + url.rstrip("/"), "http"
    return url.rstrip("/"), "grpc"


def draw_seed() -> int:
    """A fresh random seed (63 bits: fits TensorRT-LLM's UINT64 ``random_seed`` and any signed 64-bit parser)."""
    return secrets.randbits(63)


def with_seed(params: SamplingParams) -> SamplingParams:
    """``params`` with a random seed drawn when sampling without one.

    TensorRT-LLM (and the CPU stand-in) seed every request with the same default, so unseeded sampling would
    repeat itself: the same prompt at temperature 1 gave the same text every time. Greedy decoding needs no seed.
    """
    sampling = params.temperature > 0 and params.top_k != 1
    if params.seed is not None or not sampling:
        return params
    return dataclasses.replace(params, seed=draw_seed())


def backoff_delays(retries: int, *, base: float = 0.1, cap: float = 2.0) -> Iterator[float]:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base * 2**attempt))``."""
    for attempt in range(retries):
        yield random.uniform(0.0, min(cap, base * (2**attempt)))


def retry_delay(delays: Iterator[float], *, received_any: bool, deadline: float | None) -> float | None:
    """How long to wait before sending a request again after the server was unavailable; ``None``: do not retry
    (a response had arrived, the retries are used up, or the wait would pass the deadline)."""
    if received_any:
        return None
    delay = next(delays, None)
    if delay is None or (deadline is not None and time.perf_counter() + delay >= deadline):
        return None
    return delay


@dataclass
class Prepared:
    """A request ready to send."""

    prompt: str
    params: SamplingParams
    wire: WireRequest
    model: str
    deadline: float | None
    functions: list[dict] | None = None  # tools=: the functions the answer may call


_UNSET: Any = object()

# keyword arguments of chat()/stream()/generate() that are not sampling parameters
CALL_OPTIONS = ("timeout", "request_id", "system_prompt", "server_streaming")


class ClientBase:
    """Settings shared by :class:`ChatClient` and :class:`AsyncChatClient`."""

    _transport: Transport | AsyncTransport

    def __init__(
        self,
        url: str | None = None,
        profile: str | Path | ModelProfile = "akallama-70b",
        *,
        protocol: Protocol | None = None,
        model: str = "ensemble",
        timeout: float | None = 120.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        tokenizer: str | Path | TextTokenizer | None = None,
        system_prompt: Any = USE_DEFAULT,
        server_streaming: bool = True,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        engine_model: str | None = "tensorrt_llm",
    ):
        if url is None:
            url = DEFAULT_HTTP_URL if protocol == "http" else DEFAULT_GRPC_URL
        self.url, self.protocol = infer_protocol(url, protocol)
        self.profile = load_profile(profile)
        if not isinstance(model, str) or not _MODEL_NAME.match(model):
            raise InvalidRequestError(f"model must be a Triton model name such as {' or '.join(MODELS)}, got {model!r}")
        self.model = model
        self.timeout = self._check_timeout(timeout, "timeout")
        self.connect_timeout = self._check_timeout(connect_timeout, "connect_timeout") or 5.0
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise InvalidRequestError(f"retries must be an integer between 0 and 10, got {retries!r}")
        self.retries = retries
        self.system_prompt = system_prompt
        self.server_streaming = bool(server_streaming)
        self.default_params = dict(params or {})
        resolve_params(self.profile, self.default_params)  # fail early on bad defaults
        self.headers = dict(headers or {})
        self.tokenizer = self._load_tokenizer(tokenizer)
        # Cancelling an ensemble request does not reach the engine inside Triton: stop it by request id.
        # (tensorrt_llm_bls watches for cancellation itself.)
        self.engine_model = engine_model if model != "tensorrt_llm_bls" else None
        self._transport_stop_model = engine_model  # gRPC ends every early-closed call with a stop (also the BLS's)

    @staticmethod
    def _check_timeout(value: Any, name: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InvalidRequestError(f"{name} must be a positive number of seconds or None, got {value!r}")
        return float(value)

    @staticmethod
    def _load_tokenizer(tokenizer: Any) -> TextTokenizer | None:
        if tokenizer is None:
            return None
        if isinstance(tokenizer, (str, Path)):
            from koserve.text.tokenizer import load_tokenizer  # noqa: PLC0415

            return load_tokenizer(tokenizer)
        return tokenizer

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, protocol={self.protocol!r}, model={self.model!r}, " \
               f"profile={self.profile.name!r})"

    # -- request preparation -------------------------------------------------------------------------------
    def _split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        options = {k: kwargs.pop(k) for k in CALL_OPTIONS if k in kwargs}
        unknown = sorted(set(kwargs) - set(PARAM_NAMES))
        if unknown:
            raise InvalidRequestError(
                f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(PARAM_NAMES + CALL_OPTIONS)}"
            )
        return options, kwargs

    def render(self, messages: Iterable[Any], system_prompt: Any = _UNSET) -> str:
        """The prompt ``messages`` become for this client's profile (chat template + system prompt).

        ``system_prompt``: omitted → the client's setting (by default the profile's default system prompt);
        a string replaces it; ``None`` or ``""`` sends none.
        """
        if isinstance(messages, str):
            raise InvalidRequestError("messages must be a list of {'role', 'content'} dicts, not a string; "
                                      "use generate() for a raw prompt")
        if system_prompt is _UNSET:
            system_prompt = self.system_prompt
        if system_prompt is not USE_DEFAULT and not system_prompt:
            system_prompt = None
        return render_prompt(self.profile, messages, system_prompt=system_prompt, tokenizer=self.tokenizer)

    def _prepare(self, prompt: str, kwargs: dict[str, Any], options: dict[str, Any], *, stream: bool | None = None
                 ) -> Prepared:
        explicit = {k for k, v in kwargs.items() if v is not None}
        params = with_seed(resolve_params(self.profile, {**self.default_params, **kwargs}))
        explicit |= {k for k, v in self.default_params.items() if v is not None}
        timeout = options.get("timeout", self.timeout)
        timeout = self._check_timeout(timeout, "timeout")
        if stream is None:
            stream = bool(options.get("server_streaming", self.server_streaming))
        wire = build_request(prompt, params, stream=stream, request_id=options.get("request_id"), explicit=explicit)
        deadline = None if timeout is None else time.perf_counter() + timeout
        return Prepared(prompt, params, wire, self.model, deadline)

    def prepare_chat(self, messages: Iterable[Any], kwargs: dict[str, Any], *, stream: bool | None = None
                     ) -> Prepared:
        kwargs = dict(kwargs)
        tools, tool_choice = kwargs.pop("tools", None), kwargs.pop("tool_choice", None)
        options, kwargs = self._split(kwargs)
        functions = None
        if tools or tool_choice is not None:  # OpenAI's tools (koserve.guided.openai: format, guides, parsing)
            from koserve.guided.openai import check_tools, tool_choice_mode, tool_guide, tool_messages  # noqa: PLC0415

            functions = check_tools(tools)
            mode, name = tool_choice_mode(tool_choice, functions)
            guide = tool_guide(functions, mode, name)
            if guide is not None:
                if kwargs.get("json_schema") is not None or kwargs.get("response_format") is not None:
                    raise InvalidRequestError("json_schema/response_format cannot be combined with tool_choice "
                                              "required or a named function")
                kwargs["json_schema"] = guide.guide
            functions = None if mode == "none" else functions
            messages = tool_messages([dict(m) for m in messages], functions)
        prompt = self.render(messages, options.get("system_prompt", _UNSET))
        prepared = self._prepare(prompt, kwargs, options, stream=stream)
        prepared.functions = functions
        return prepared

    def prepare_generate(self, prompt: str, kwargs: dict[str, Any], *, stream: bool | None = None) -> Prepared:
        options, kwargs = self._split(dict(kwargs))
        if "system_prompt" in options:
            raise InvalidRequestError("system_prompt applies to chat(); generate() sends the prompt as it is")
        return self._prepare(prompt, kwargs, options, stream=stream)

    @overload
    def _open_transport(self, *, asynchronous: Literal[False]) -> Transport: ...

    @overload
    def _open_transport(self, *, asynchronous: Literal[True]) -> AsyncTransport: ...

    def _open_transport(self, *, asynchronous: bool) -> Transport | AsyncTransport:
        """The transport for this client's URL and protocol (the sync or asyncio one)."""
        if self.model == DIRECT:
            return self._open_direct_transport(asynchronous)
        if self.protocol == "grpc":
            from koserve.client._grpc import AsyncGrpcTransport, GrpcTransport  # noqa: PLC0415

            grpc_cls = AsyncGrpcTransport if asynchronous else GrpcTransport
            return grpc_cls(self.url, connect_timeout=self.connect_timeout, headers=self.headers,
                            stop_model=self._transport_stop_model)
        from koserve.client._http import AsyncHttpTransport, HttpTransport  # noqa: PLC0415

        http_cls = AsyncHttpTransport if asynchronous else HttpTransport
        return http_cls(self.url, connect_timeout=self.connect_timeout, headers=self.headers)

    def _open_direct_transport(self, asynchronous: bool) -> AsyncTransport:
        if not asynchronous:
            raise InvalidRequestError("model='engine' (the direct engine path) is served by AsyncChatClient and the "
                                      "gateway; ChatClient sends to 'ensemble' or 'tensorrt_llm_bls'")
        if self.protocol != "grpc":
            raise InvalidRequestError("model='engine' needs Triton's gRPC address (stream_infer), not an http:// URL")
        from koserve.client._grpc import AsyncGrpcTransport  # noqa: PLC0415
        from koserve.frontend import AsyncEngineTransport  # noqa: PLC0415

        grpc = AsyncGrpcTransport(self.url, connect_timeout=self.connect_timeout, headers=self.headers,
                                  stop_model=self._transport_stop_model)
        return AsyncEngineTransport(grpc, self.profile, self.tokenizer, engine=self._transport_stop_model or "tensorrt_llm")

    # -- results -------------------------------------------------------------------------------------------
    def stream_state(self, prepared: Prepared) -> StreamState:
        """The I/O-free state of one generation of ``prepared``."""
        engine = None if self._transport.stops_on_close else self.engine_model
        return StreamState(prepared, self.build_result, engine)

    def count_prompt_tokens(self, prompt: str) -> int | None:
        return None if self.tokenizer is None else len(self.tokenizer.encode(prompt, add_special_tokens=True))

    def build_result(self, prepared: Prepared, asm: ResponseAssembler, cancelled: bool) -> ChatResult:
        if prepared.wire.stream:
            completion = asm.tokens
        elif self.tokenizer is not None:
            completion = len(self.tokenizer.encode(asm.raw_text, add_special_tokens=False))
        else:
            completion = None
        if asm.stopped:
            reason = "stop"
        elif cancelled:
            reason = "cancelled"
        elif completion is not None and completion >= prepared.params.max_tokens:
            reason = "length"
        else:
            reason = "stop"
        token_times = tuple(asm.token_times) if prepared.wire.stream else ()
        tool_calls: tuple[dict, ...] = ()
        if prepared.functions:
            from koserve.guided.openai import parse_tool_call  # noqa: PLC0415

            call = parse_tool_call(asm.text, prepared.functions)
            if call is not None:
                tool_calls, reason = (call,), "tool_calls"
        return ChatResult(
            text=asm.text,
            finish_reason=reason,
            prompt_tokens=self.count_prompt_tokens(prepared.prompt),
            completion_tokens=completion,
            ttft=asm.token_times[0] if asm.token_times else None,
            token_times=token_times,
            total_time=asm.elapsed(),
            request_id=prepared.wire.request_id,
            model=prepared.model,
            stop_string=asm.matched,
            prompt=prepared.prompt,
            seed=prepared.params.seed,
            tool_calls=tool_calls,
        )
