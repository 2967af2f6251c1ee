"""The BLS's engine client on a bare HTTP/2 connection to the server's own gRPC endpoint (``h2`` for the protocol).

ONE ``ModelStreamInfer`` stream carries every request of the model and the responses are routed by request id
(:func:`~koserve.triton_models.engine_wire.route_response`); one thread owns the socket and reads it itself, so a read
hands it every response that arrived since the last read. grpcio's Python layer (the previous client) takes one
completion-queue event, one hand-over between its poller thread and the reading thread and one Python call per
message, whatever the backlog: ≈ 120–150 µs of the stub's CPU per engine response at 64 streams on the 2-core VM,
the largest cost the BLS added to a token. Here a read of ``n`` responses costs one system call and one
wake-up. Besides routing, the reader runs one hook (:data:`~koserve.triton_models.engine_types.ReaderHook`; the BLS
passes its outbox, which sends what is due and, when the model is saturated, pauses the reader after a short read so
that the next read finds several responses: docs/serving.md, "How the BLS reads the engine").

gRPC on HTTP/2, as used here: a request stream ``POST /inference.GRPCInferenceService/ModelStreamInfer`` with
``content-type: application/grpc``; each message is a 5-byte prefix (compressed flag, big-endian length) and a
protobuf; the call ends with trailers carrying ``grpc-status`` / ``grpc-message``. TensorRT-LLM ``stop`` requests go
on short streams of their own on the same connection (their answers are read and dropped).
"""

from __future__ import annotations

import logging
import queue
import selectors
import socket
import struct
import threading
import time
from urllib.parse import unquote

from koserve.errors import KoserveError
from koserve.triton_models.engine_types import EngineError, EngineHandler, ReaderHook
from koserve.triton_models.engine_wire import (
    HANDLER_FAILED,
    call_handler,
    request_proto,
    route_response,
    stop_tensors,
    triton_code,
)

log = logging.getLogger("koserve")

METHOD_PATH = "/inference.GRPCInferenceService/ModelStreamInfer"
RECEIVE_WINDOW = 1 << 24  # bytes the server may send ahead, per stream and per connection
READ_SIZE = 1 << 18
CONNECT_TIMEOUT_S = 10.0
MAX_FRAME = 1 << 20  # the largest HTTP/2 frame we accept (SETTINGS_MAX_FRAME_SIZE; the default is 16 KiB)
_FRAME_HEADER = 9
_DATA = 0x0
_FRAME_HEAD = struct.Struct(">IBI")  # an HTTP/2 frame header, read in one call (see DataFrameMerger.merge)
_MESSAGE_PREFIX = struct.Struct(">BI")  # a gRPC message's prefix: compressed flag, length (big-endian)


class DataFrameMerger:
    """Merges runs of consecutive plain DATA frames of one stream in the bytes read from the socket into one frame
    each, before ``h2`` sees them.

    ``h2`` spends ≈ 15–20 µs of Python per frame (its state machines, flow-control bookkeeping, and a ``repr`` of every
    frame it logs at trace level) and Triton sends every gRPC message of the shared call as a DATA frame of its own: at
    64 streams that was the largest part of the reader's cost per token. A merged frame carries the same payload
    bytes in order and the same flow-controlled length (only frames without flags are merged: no padding, no
    END_STREAM), so ``h2`` still does all of HTTP/2 — flow control, settings, trailers, resets — once per read instead
    of once per message. Frames are passed on whole: an incomplete frame at the end of a read is held back until
    the rest arrives."""

    __slots__ = ("stream_id", "_held")

    def __init__(self, stream_id: int):
        self.stream_id = stream_id
        self._held = b""

    def merge(self, data: bytes, max_frame: int) -> bytes:
        """The complete frames of ``held + data``, runs of plain DATA frames on the stream merged (each merged
        frame at most ``max_frame`` bytes of payload)."""
        if self._held:
            data = self._held + data
        size = len(data)
        out: list[bytes] = []
        run: list[bytes] = []
        run_len = 0
        pos = 0
        want = self.stream_id
        header = _FRAME_HEAD.unpack_from
        while size - pos >= _FRAME_HEADER:
            length_type, flags, stream = header(data, pos)  # 24-bit length + 8-bit type, flags, R + stream id
            length = length_type >> 8
            end = pos + _FRAME_HEADER + length
            if end > size:
                break
            if length_type & 0xFF == _DATA and flags == 0 and stream & 0x7FFFFFFF == want:
                if run_len + length > max_frame and run:
                    out.append(_data_frame(want, run, run_len))
                    run, run_len = [], 0
                run.append(data[pos + _FRAME_HEADER:end])
                run_len += length
            else:
                if run:
                    out.append(_data_frame(want, run, run_len))
                    run, run_len = [], 0
                out.append(data[pos:end])
            pos = end
        if run:
            out.append(_data_frame(want, run, run_len))
        self._held = data[pos:]
        return out[0] if len(out) == 1 else b"".join(out)


def _data_frame(stream_id: int, payloads: list[bytes], length: int) -> bytes:
    if len(payloads) == 1:
        payload = payloads[0]
    else:
        payload = b"".join(payloads)
    return length.to_bytes(3, "big") + b"\0\0" + stream_id.to_bytes(4, "big") + payload


class _Connection:
    """One HTTP/2 connection: the shared call's stream, the stop streams, the handlers of requests in flight."""

    def __init__(self, host: str, port: int, sock: socket.socket | None = None):
        import h2.config  # noqa: PLC0415
        import h2.connection  # noqa: PLC0415
        import h2.events  # noqa: PLC0415
        import h2.settings  # noqa: PLC0415
        from tritonclient.grpc import service_pb2  # noqa: PLC0415

        self.authority = f"{host}:{port}"
        if sock is None:  # (a given socket: the micro-benchmark's socketpair)
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self.sock.settimeout(None)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: RECEIVE_WINDOW,
                                 h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME})
        self.h2.increment_flow_control_window(RECEIVE_WINDOW)
        self.routes: dict[str, EngineHandler] = {}
        self.outgoing: queue.SimpleQueue = queue.SimpleQueue()  # (message bytes, end the stream after it?)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)  # a wake-up byte already pending is enough: never block a submitting thread
        self.alive = True
        self.call_id = self._open_stream()
        self.pending: dict[int, bytearray] = {self.call_id: bytearray()}  # bytes waiting for flow-control window
        self.ending: set[int] = set()  # streams to half-close once their pending bytes are out
        self.inbox = bytearray()
        self.frames = DataFrameMerger(self.call_id)
        self.window_waits = 0  # times sending stopped for want of flow-control window
        self._events = h2.events
        self._parse = service_pb2.ModelStreamInferResponse.FromString

    def _open_stream(self) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, [
            (":method", "POST"), (":scheme", "http"), (":path", METHOD_PATH), (":authority", self.authority),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        return stream_id

    def queue_message(self, payload: bytes, separate: bool = False) -> None:
        """Have the reader thread send ``payload`` on the shared call (``separate``: on a stream of its own)."""
        self.outgoing.put((payload, separate))
        try:
            self.wake_w.send(b"\0")
        except OSError:
            pass

    def take_outgoing(self) -> None:
        """Frame the queued messages onto their streams (reader thread)."""
        try:
            while self.wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while True:
            try:
                payload, separate = self.outgoing.get_nowait()
            except queue.Empty:
                break
            stream_id = self.call_id
            if separate:
                stream_id = self._open_stream()
                self.pending[stream_id] = bytearray()
                self.ending.add(stream_id)
            self.pending[stream_id] += len(payload).to_bytes(5, "big") + payload  # flag 0: not compressed

    def pump(self) -> None:
        """Send as much of the pending bytes as the server's flow-control windows allow, then the socket writes."""
        h2conn = self.h2
        for stream_id in list(self.pending):
            data = self.pending[stream_id]
            while data:
                room = min(h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size, len(data))
                if room <= 0:
                    self.window_waits += 1
                    break
                h2conn.send_data(stream_id, bytes(data[:room]))
                del data[:room]
            if not data and stream_id in self.ending:
                h2conn.end_stream(stream_id)
                self.ending.discard(stream_id)
                del self.pending[stream_id]
        out = h2conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def receive(self, data: bytes, hook: ReaderHook | None = None) -> tuple[str, str] | None:
        """Hand the engine responses in ``data`` (bytes read from the socket) to their handlers, calling
        ``hook(False)`` after each; returns why the shared call ended (message, Triton error code), or None while it
        goes on (reader thread).

        Flow control is acknowledged once per stream and read (not per DATA frame): the server's window is
        :data:`RECEIVE_WINDOW`, far more than one read."""
        ev, h2conn, call_id, inbox = self._events, self.h2, self.call_id, self.inbox
        data_event = ev.DataReceived
        ended = None
        acked: dict[int, int] = {}
        for event in h2conn.receive_data(self.frames.merge(data, h2conn.max_inbound_frame_size)):
            kind = type(event)
            if kind is data_event:
                sid = event.stream_id
                acked[sid] = acked.get(sid, 0) + event.flow_controlled_length
                if sid == call_id:
                    inbox += event.data
            elif kind is ev.ConnectionTerminated:
                ended = (f"the engine connection was closed by the server (HTTP/2 error {event.error_code})",
                         "UNAVAILABLE")
            elif getattr(event, "stream_id", None) != call_id:
                continue  # the stop streams' answers are dropped
            elif kind is ev.TrailersReceived:
                ended = stream_status(event.headers) or (STREAM_ENDED, "UNAVAILABLE")
            elif kind is ev.StreamEnded:
                ended = ended or (STREAM_ENDED, "UNAVAILABLE")
            elif kind is ev.StreamReset:
                ended = (f"the engine stream was reset (HTTP/2 error {event.error_code})", "UNAVAILABLE")
            elif kind is ev.ResponseReceived:
                ended = stream_status(event.headers) or ended  # a gRPC error may come as headers only
        for sid, length in acked.items():
            if length:  # h2 ignores streams that closed meanwhile
                h2conn.acknowledge_received_data(length, sid)
        parse, routes, prefix = self._parse, self.routes, _MESSAGE_PREFIX.unpack_from
        pos, size = 0, len(inbox)
        while size - pos >= 5:
            end = pos + 5 + prefix(inbox, pos)[1]
            if end > size:
                break
            route_response(parse(inbox[pos + 5:end]), routes)  # (protobuf parses the bytearray slice: no bytes())
            pos = end
            if hook is not None:
                try:  # (call_handler inline: once per engine response)
                    hook(False)
                except Exception:  # noqa: BLE001 - the model's hook must not stop the reader
                    log.exception(HANDLER_FAILED)
        del inbox[:pos]
        return ended

    def close(self) -> None:
        self.alive = False
        for s in (self.sock, self.wake_r, self.wake_w):
            try:
                s.close()
            except OSError:
                pass


class H2EngineClient:
    """The engine over the server's own gRPC endpoint on a bare HTTP/2 connection (see module doc); an
    :class:`~koserve.triton_models.engine_types.EngineTransport`.

    ``hook`` (a :data:`~koserve.triton_models.engine_types.ReaderHook`) runs on the reader thread: after each engine
    response, and before each wait for the socket, which then lasts at most until the time it returns."""

    def __init__(self, url: str, model: str, hook: ReaderHook | None = None):
        host, _, port = url.rpartition(":")
        if not host or not port.isdigit():
            raise KoserveError(f"engine gRPC url must be host:port, got {url!r}")
        self.url, self.model = url, model
        self._host, self._port = host.strip("[]"), int(port)
        self._hook = hook
        self._lock = threading.Lock()
        self._conn: _Connection | None = None
        self._closed = False

    def in_flight(self, request_id: str) -> bool:
        conn = self._conn
        return conn is not None and request_id in conn.routes

    def _connection(self) -> _Connection:
        """The live connection (a new one, with its reader thread, when there is none) — with the lock held."""
        if self._closed:
            raise EngineError("tensorrt_llm_bls is shutting down", "UNAVAILABLE")
        conn = self._conn
        if conn is None or not conn.alive:
            try:
                conn = _Connection(self._host, self._port)
            except OSError as exc:
                raise EngineError(f"cannot reach the engine at {self.url}: {exc}", "UNAVAILABLE") from exc
            self._conn = conn
            threading.Thread(target=self._read, args=(conn,), name="koserve-engine-reader", daemon=True).start()
        return conn

    def submit(self, request_id: str, tensors, outputs: list[str], handler: EngineHandler) -> None:
        """Send a request (``request_id`` must not be in flight); its responses go to ``handler``."""
        payload = request_proto(self.model, tensors, outputs, request_id).SerializeToString()
        with self._lock:
            conn = self._connection()
            if request_id in conn.routes:
                raise EngineError(f"engine request id {request_id!r} is already in flight", "ALREADY_EXISTS")
            conn.routes[request_id] = handler
        conn.queue_message(payload)

    def stop(self, request_id: str) -> None:
        """Send TensorRT-LLM's ``stop`` for ``request_id`` on a stream of its own (its answer is dropped)."""
        payload = request_proto(self.model, stop_tensors(), ["output_ids"], request_id).SerializeToString()
        try:
            with self._lock:
                conn = self._connection()
        except EngineError as exc:
            log.debug("tensorrt_llm_bls: stop %s: %s", request_id, exc)
            return
        conn.queue_message(payload, separate=True)

    def _call_hook(self, waiting: bool) -> float | None:
        try:
            return self._hook(waiting)
        except Exception:  # noqa: BLE001 - the hook must not stop the reader
            log.exception(HANDLER_FAILED)
            return None

    def _read(self, conn: _Connection) -> None:
        hook = self._hook
        clock = time.monotonic
        reason, code = STREAM_ENDED, "UNAVAILABLE"
        selector = selectors.DefaultSelector()
        selector.register(conn.sock, selectors.EVENT_READ, "socket")
        selector.register(conn.wake_r, selectors.EVENT_READ, "wake")
        routes = conn.routes
        try:
            conn.take_outgoing()
            conn.pump()
            while not self._closed:
                timeout = None
                if hook is not None:
                    at = self._call_hook(True)
                    if at is not None:
                        timeout = at - clock()
                        if timeout < 0:
                            timeout = 0
                ready = selector.select(timeout)
                if not ready:
                    continue  # the hook's time came
                if any(key.data == "wake" for key, _ in ready):
                    conn.take_outgoing()
                if not any(key.data == "socket" for key, _ in ready):
                    conn.pump()
                    continue
                data = conn.sock.recv(READ_SIZE)
                if not data:
                    reason = "the engine connection closed"
                    break
                ended = conn.receive(data, hook)
                if ended:
                    reason, code = ended
                    break
                conn.pump()
        except Exception as exc:  # noqa: BLE001 - socket or protocol failure: every request on it fails
            reason = f"the engine stream failed: {type(exc).__name__}: {exc}"
        finally:
            selector.close()
        with self._lock:
            if self._conn is conn:
                self._conn = None
            orphans = list(routes.values())
            routes.clear()
            conn.close()
        if orphans and not self._closed:
            log.warning("tensorrt_llm_bls: %s with %d requests in flight", reason, len(orphans))
        for handler in orphans:
            call_handler(handler.on_error, f"tensorrt_llm_bls: {reason}", code)
        if hook is not None:
            self._call_hook(True)  # their final (error) responses: no other thread sends them

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.wake_w.send(b"\0")  # the reader sees _closed and ends
            except OSError:
                pass


STREAM_ENDED = "the engine stream ended"


def stream_status(headers) -> tuple[str, str] | None:
    """(message, Triton error code) of the gRPC status in a call's trailers or headers (None: OK or no status)."""
    fields = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
              for k, v in headers}
    status = fields.get("grpc-status")
    if status is None or status == "0":
        return None
    code = triton_code(int(status)) if status.isdigit() else "INTERNAL"
    return f"the engine stream failed: gRPC status {status}: {unquote(fields.get('grpc-message', ''))}", code
