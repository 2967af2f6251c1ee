"""The sync and async clients are twins: the same transport interface, and the same deltas, results, engine stops
and closing for the same responses.

The transports here replay scripted responses through the declared :class:`Transport` / :class:`AsyncTransport`
interface (as httpx's ``MockTransport`` does for httpx's clients): what is compared is koserve's own stream logic.
The real transports against a real tritonserver are in test_client_triton.py and test_http_events.py.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import koserve.client
from koserve.client import AsyncChatClient, ChatClient, ServerError, ServerUnavailableError
from koserve.client._grpc import AsyncGrpcTransport, GrpcTransport
from koserve.client._http import AsyncHttpTransport, HttpTransport
from koserve.client.result import Piece
from koserve.client.transport import AsyncTransport, Transport

MSGS = [{"role": "user", "content": "안녕?"}]


def _members(protocol: type) -> dict[str, Any]:
    return {name: value for name, value in vars(protocol).items() if not name.startswith("_")} | {
        name: None for name in protocol.__annotations__}


@pytest.mark.parametrize("protocol, implementations, is_async", [
    (Transport, (GrpcTransport, HttpTransport), False),
    (AsyncTransport, (AsyncGrpcTransport, AsyncHttpTransport), True),
])
def test_transports_implement_the_declared_interface(protocol, implementations, is_async):
    members = _members(protocol)
    assert set(members) == {"protocol", "stops_on_close", "responses", "stop_engine", "ready", "close"}
    for cls in implementations:
        for name, declared in members.items():
            assert hasattr(cls, name), (cls, name)
            if declared is None:  # an attribute
                continue
            impl = getattr(cls, name)
            assert list(inspect.signature(impl).parameters) == list(inspect.signature(declared).parameters), \
                (cls, name)
            if name == "responses":
                assert (inspect.isasyncgenfunction(impl) if is_async else inspect.isgeneratorfunction(impl)), cls
            else:
                assert inspect.iscoroutinefunction(impl) is is_async, (cls, name)
    assert [cls.stops_on_close for cls in implementations] == [True, False]  # gRPC stops the engine itself


def test_no_client_module_reaches_into_a_transport_by_getattr():
    sources = Path(koserve.client.__file__).parent.glob("*.py")
    offenders = [f"{path.name}: {line.strip()}" for path in sources for line in path.read_text().splitlines()
                 if re.search(r"getattr\([^)]*_transport|hasattr\([^)]*_transport", line)]
    assert not offenders, offenders


# -- scripted transports ---------------------------------------------------------------------------------------
STOP_ENGINE = "tensorrt_llm"


class Script:
    """Per request: a list of pieces and exceptions to produce, in order. Records what the client did."""

    protocol = "scripted"

    def __init__(self, requests: list[list[Any]], stops_on_close: bool = False):
        self.requests = list(requests)
        self.stops_on_close = stops_on_close
        self.log: list[tuple] = []

    def _next(self) -> list[Any]:
        return self.requests.pop(0)


class SyncScript(Script):
    def responses(self, model, request, deadline):
        items = self._next()
        self.log.append(("open", model))
        try:
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                yield item
            self.log.append(("ended",))
        finally:
            self.log.append(("closed",))

    def stop_engine(self, engine, request_id, timeout=2.0):
        self.log.append(("stop", engine))
        return True

    def ready(self, model, timeout=2.0):
        return True

    def close(self):
        self.log.append(("client closed",))


class AsyncScript(Script):
    async def responses(self, model, request, deadline):
        items = self._next()
        self.log.append(("open", model))
        try:
            for item in items:
                await asyncio.sleep(0)
                if isinstance(item, BaseException):
                    raise item
                yield item
            self.log.append(("ended",))
        finally:
            self.log.append(("closed",))

    async def stop_engine(self, engine, request_id, timeout=2.0):
        self.log.append(("stop", engine))
        return True

    async def ready(self, model, timeout=2.0):
        return True

    async def close(self):
        self.log.append(("client closed",))


def _outcome(result) -> dict[str, Any]:
    out = result.to_dict()
    for timing in ("ttft_ms", "total_ms", "mean_inter_token_ms", "tokens_per_second", "token_times_ms", "request_id"):
        out.pop(timing)
    out["tokens_timed"] = len(result.token_times)
    return out


def run_sync(requests, *, how: str, stops_on_close: bool = False, **client_options) -> tuple:
    transport = SyncScript(requests, stops_on_close)
    client = ChatClient("127.0.0.1:9", "komt-13b", transport=transport, retries=2, **client_options)
    deltas: list[str] = []
    try:
        if how == "chat":
            outcome = _outcome(client.chat(MSGS, temperature=0, max_tokens=6))
        elif how == "stream":
            stream = client.stream(MSGS, temperature=0, max_tokens=6)
            deltas = list(stream)
            outcome = _outcome(stream.result)
        else:  # close after the first delta
            stream = client.stream(MSGS, temperature=0, max_tokens=6)
            deltas = [next(stream)]
            stream.close()
            outcome = _outcome(stream.result)
    except Exception as exc:  # noqa: BLE001 - compared below
        outcome = f"{type(exc).__name__}: {exc}"
    client.close()
    return deltas, outcome, transport.log


def run_async(requests, *, how: str, stops_on_close: bool = False, **client_options) -> tuple:
    async def main():
        transport = AsyncScript(requests, stops_on_close)
        client = AsyncChatClient("127.0.0.1:9", "komt-13b", transport=transport, retries=2, **client_options)
        deltas: list[str] = []
        try:
            if how == "chat":
                outcome = _outcome(await client.chat(MSGS, temperature=0, max_tokens=6))
            elif how == "stream":
                stream = client.stream(MSGS, temperature=0, max_tokens=6)
                deltas = [d async for d in stream]
                outcome = _outcome(stream.result)
            else:
                stream = client.stream(MSGS, temperature=0, max_tokens=6)
                deltas = [await stream.__anext__()]
                await stream.aclose()
                outcome = _outcome(stream.result)
        except Exception as exc:  # noqa: BLE001 - compared below
            outcome = f"{type(exc).__name__}: {exc}"
        await client.close()
        return deltas, outcome, transport.log

    return asyncio.run(asyncio.wait_for(main(), 20))


KOREAN = "안녕하세요".encode()
SCRIPTS = {
    # the whole answer, a UTF-8 character split across responses, an empty final response
    "whole": [[Piece(KOREAN[:4]), Piece(KOREAN[4:]), Piece("!".encode()), Piece(None)]],
    # komt's stop word arriving split: the client cuts it and stops the engine itself
    "stop string": [[Piece("네 ".encode()), Piece(b"#"), Piece(b"## Response"), Piece(b"never read")]],
    "length": [[Piece(b"a"), Piece(b"b"), Piece(b"c"), Piece(b"d"), Piece(b"e"), Piece(b"f")]],
    "server error": [[Piece("가".encode()), ServerError("model failed")]],
    # unavailable before any response: retried; the second try answers
    "unavailable then ok": [[ServerUnavailableError("cannot reach Triton")], [Piece("됐다".encode())]],
    "unavailable after a response": [[Piece("가".encode()), ServerUnavailableError("connection lost")]],
    "close": [[Piece("하나".encode()), Piece("둘".encode()), Piece(b"three")]],
}
CASES = [("whole", "chat"), ("whole", "stream"), ("stop string", "chat"), ("stop string", "stream"),
         ("length", "stream"), ("server error", "chat"), ("server error", "stream"), ("unavailable then ok", "chat"),
         ("unavailable after a response", "chat"), ("close", "close")]


@pytest.mark.parametrize("stops_on_close", [False, True])
@pytest.mark.parametrize("script, how", CASES)
def test_sync_and_async_streams_do_the_same(script, how, stops_on_close):
    sync = run_sync([list(r) for r in SCRIPTS[script]], how=how, stops_on_close=stops_on_close)
    aio = run_async([list(r) for r in SCRIPTS[script]], how=how, stops_on_close=stops_on_close)
    assert sync == aio
    deltas, outcome, log = sync
    stops = [entry for entry in log if entry[0] == "stop"]
    opened = [entry for entry in log if entry[0] == "open"]
    assert len(opened) == len([entry for entry in log if entry == ("closed",)])  # every response stream closed
    expected_stop = [] if stops_on_close else [("stop", STOP_ENGINE)]
    if script == "whole":
        assert outcome["text"] == "안녕하세요!" and outcome["finish_reason"] == "stop" and not stops
        assert outcome["completion_tokens"] == 3 == outcome["tokens_timed"]
    elif script == "stop string":
        assert outcome["text"] == "네 " and outcome["stop_string"] == "###" and stops == expected_stop
        assert ("ended",) not in log
    elif script == "length":
        assert outcome["finish_reason"] == "length" and "".join(deltas) == "abcdef" and not stops
    elif script == "server error":
        assert outcome == "ServerError: model failed" and stops == expected_stop
    elif script == "unavailable then ok":
        assert outcome["text"] == "됐다" and len(opened) == 2 and not stops
    elif script == "unavailable after a response":
        assert outcome == "ServerUnavailableError: connection lost" and len(opened) == 1 and not stops
    elif script == "close":
        assert deltas == ["하나"] and outcome["finish_reason"] == "cancelled" and outcome["text"] == "하나"
        assert stops == expected_stop and ("ended",) not in log
    if how == "stream" and script != "server error":
        assert "".join(deltas) == outcome["text"]


def test_the_ensemble_engine_is_not_stopped_for_a_bls_target():
    """The BLS watches for cancellation itself: no engine stop from either client."""
    for run in (run_sync, run_async):
        deltas, outcome, log = run([list(SCRIPTS["close"][0])], how="close", model="tensorrt_llm_bls")
        assert outcome["finish_reason"] == "cancelled" and not [e for e in log if e[0] == "stop"], run
