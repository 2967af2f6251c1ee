"""``preprocessing`` → ``postprocessing``: "a request with this id starts now, and this is how it ends".

The ensemble's ``postprocessing`` keeps one text stream per request id, but Triton 2.51 shows it neither a request's
start nor its end (it never sees the final flag), and a step after the decoupled engine may only take tensors that
come from the engine (so ``preprocessing`` cannot pass it anything through the ensemble). So ``preprocessing`` —
which runs before the engine produces anything for the request — sends a :class:`StreamStart` as a Unix datagram to
``postprocessing`` (abstract socket named after the tritonserver process both stubs are children of) and waits for
the answer:

- ``postprocessing`` registers a fresh stream for the id (a reused id never continues an earlier stream) that knows
  how the engine will end it: after ``max_tokens`` generated tokens, after one of the stop-word token sequences (the
  engine emits those tokens, then stops), with an end id (never emitted: the engine's last streamed response then
  carries no tokens), or in one response when not streaming. At that response it flushes the text the stop-string
  matcher still holds back (an answer ending in ``C#``, ``##`` or ``<`` comes out whole) and closes the stream.
- if another request with the same id is still in flight, ``postprocessing`` refuses and ``preprocessing`` answers
  the new request ``INVALID_ARG`` naming the id: two streams with one id cannot be told apart downstream.

Ordering is exact: the stream is registered before the answer is sent, hence before ``preprocessing`` returns and
before the engine's first response for the request can reach ``postprocessing``. Best effort only if no receiver
answers within ``timeout_s`` (no postprocessing on this server): then nothing is registered and the request runs.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable

MAX_MESSAGE_BYTES = 60_000  # below the 64 KiB datagram limit
_OK = b"ok"
_BUSY = b"busy:"


def channel_name(server_pid: int | None = None) -> bytes:
    """Abstract-namespace socket address shared by the python stubs of one tritonserver process."""
    return b"\0koserve-request-start-" + str(os.getppid() if server_pid is None else server_pid).encode()


@dataclass(frozen=True)
class StreamStart:
    """What ``postprocessing`` needs to follow one request of the ensemble and to see its end."""

    request_id: str
    streaming: bool = True
    max_tokens: int = 0  # 0: unknown (no length rule)
    input_len: int = 0
    exclude_input_in_output: bool = True  # False and not streaming: the response starts with the prompt's ids
    end_ids: tuple[int, ...] = ()
    stop_ids: tuple[tuple[int, ...], ...] = ()  # token sequences after which the engine stops
    stop_words: tuple[str, ...] = ()  # text-level stop strings (profile + request)
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False

    def encode(self) -> bytes:
        body = {
            "id": self.request_id, "s": self.streaming, "m": self.max_tokens, "l": self.input_len,
            "x": self.exclude_input_in_output, "e": list(self.end_ids), "t": [list(w) for w in self.stop_ids],
            "w": list(self.stop_words), "ni": self.return_num_input_tokens, "no": self.return_num_output_tokens,
        }
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        if len(data) > MAX_MESSAGE_BYTES:  # very many stop words: keep the id and the length rule
            body["t"], body["w"] = [], []
            data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        return data

    @classmethod
    def decode(cls, data: bytes) -> "StreamStart":
        body = json.loads(data.decode("utf-8", "surrogatepass"))
        return cls(
            request_id=body["id"], streaming=bool(body["s"]), max_tokens=int(body["m"]), input_len=int(body["l"]),
            exclude_input_in_output=bool(body["x"]), end_ids=tuple(body["e"]),
            stop_ids=tuple(tuple(w) for w in body["t"]), stop_words=tuple(body["w"]),
            return_num_input_tokens=bool(body.get("ni")), return_num_output_tokens=bool(body.get("no")),
        )


class StartSender:
    """Used by ``preprocessing``: :meth:`started` returns None (go on) or the reason the request is refused."""

    def __init__(self, name: bytes | None = None, *, timeout_s: float = 1.0):
        self.name = channel_name() if name is None else name
        self.timeout_s = timeout_s
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(b"")  # autobind: an abstract address of our own, for the answers
        self._sock.setblocking(False)
        self._lock = threading.Lock()

    def started(self, start: StreamStart) -> str | None:
        if not start.request_id:
            return None
        data = start.encode()
        deadline = time.monotonic() + self.timeout_s
        with self._lock:
            self._drain_stale()
            while True:
                try:
                    self._sock.sendto(data, self.name)
                    break
                except BlockingIOError:  # the receiver's queue is full: it drains continuously
                    if time.monotonic() > deadline:
                        return None
                    time.sleep(0.0005)
                except OSError:  # no receiver (no postprocessing on this server)
                    return None
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                readable, _, _ = select.select([self._sock], [], [], left)
                if not readable:
                    return None
                try:
                    answer = self._sock.recv(MAX_MESSAGE_BYTES)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    return None
                tag, _, request_id = answer.partition(b"\n")
                if request_id.decode("utf-8", "surrogatepass") != start.request_id:
                    continue  # a late answer to an earlier, timed-out question
                if tag.startswith(_BUSY):
                    return tag[len(_BUSY):].decode("utf-8", "replace")
                return None

    def _drain_stale(self) -> None:
        for _ in range(1000):
            try:
                self._sock.recv(MAX_MESSAGE_BYTES)
            except OSError:
                return

    def close(self) -> None:
        self._sock.close()


class StartReceiver:
    """Used by ``postprocessing``: calls ``on_start(start)`` (returns None to accept, or a refusal message) for every
    request that starts, in its own thread, and answers the sender."""

    def __init__(self, on_start: Callable[[StreamStart], str | None], name: bytes | None = None):
        self.name = channel_name() if name is None else name
        self.on_start = on_start
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self._sock.bind(self.name)
        self._sock.setblocking(False)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="koserve-start-receiver", daemon=True)
        self._thread.start()

    def _handle(self, data: bytes, sender) -> None:
        try:
            start = StreamStart.decode(data)
        except (ValueError, KeyError, TypeError):
            return  # not ours
        try:
            refusal = self.on_start(start)
        except Exception:  # noqa: BLE001 - answer, keep receiving
            refusal = None
        tag = _OK if refusal is None else _BUSY + refusal.encode("utf-8", "replace")
        if sender:
            try:
                self._sock.sendto(tag + b"\n" + start.request_id.encode("utf-8", "surrogatepass"), sender)
            except OSError:
                pass  # the sender gave up waiting

    def _run(self) -> None:
        while not self._closed:
            try:
                readable, _, _ = select.select([self._sock], [], [], 0.5)
            except (OSError, ValueError):
                return
            if not readable:
                continue
            for _ in range(10_000):
                try:
                    data, sender = self._sock.recvfrom(MAX_MESSAGE_BYTES)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return
                self._handle(data, sender)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
