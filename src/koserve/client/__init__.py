"""Python client for koserve's Triton models: chat templates, stop words, streaming, over gRPC or HTTP.

>>> from koserve.client import ChatClient
>>> client = ChatClient("127.0.0.1:8001", "akallama-70b")           # gRPC; "http://127.0.0.1:8000" for HTTP
>>> client.chat([{"role": "user", "content": "네 이름은 뭐야?"}]).text
>>> for delta in client.stream([{"role": "user", "content": "안녕?"}]):
...     print(delta, end="", flush=True)

Needs only ``koserve[client]`` (tritonclient, httpx, tokenizers): no torch, no transformers.
"""

from koserve.client._base import DEFAULT_GRPC_URL, DEFAULT_HTTP_URL, MODELS
from koserve.client.aio import AsyncChatClient, AsyncChatStream
from koserve.client.errors import (
    ClientError,
    InvalidRequestError,
    RequestTimeoutError,
    ServerError,
    ServerUnavailableError,
)
from koserve.client.params import SamplingParams, resolve_params
from koserve.client.result import ChatResult
from koserve.client.sync import ChatClient, ChatStream
from koserve.client.transport import AsyncTransport, Transport

__all__ = [
    "DEFAULT_GRPC_URL",
    "DEFAULT_HTTP_URL",
    "MODELS",
    "AsyncChatClient",
    "AsyncChatStream",
    "AsyncTransport",
    "ChatClient",
    "ChatResult",
    "ChatStream",
    "ClientError",
    "InvalidRequestError",
    "RequestTimeoutError",
    "SamplingParams",
    "ServerError",
    "ServerUnavailableError",
    "Transport",
    "resolve_params",
]
