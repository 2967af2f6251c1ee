"""Per-request streaming metrics: TTFT, TPOT, chunk gaps, end-to-end latency, prompt and output tokens.

Definitions (the names AIPerf / genai-perf and vLLM use):

- TTFT: send -> first non-empty streamed text chunk.
- TPOT (time per output token; AIPerf's and genai-perf's per-request "inter-token latency", vLLM's "TPOT"):
  ``(E2E - TTFT) / (output tokens - 1)``, one value per request with at least two output tokens.
- chunk gap: the time between two consecutive non-empty chunks of one stream (every gap of every request). One
  chunk can carry several tokens (a Korean character spanning 2-3 byte tokens arrives as one chunk), so single
  gaps of 2-3x the token pace are normal: the tail of the chunk gaps is longer than the tail of TPOT.

A :class:`StreamTimer` is fed every streamed chunk of one request; :meth:`StreamTimer.finish`
returns a :class:`StreamRecord`. Records are written one JSON object per line (JSONL) by
:class:`RecordWriter` — the report is computed from these exact per-request values rather than
from locust's bucketed, rounded percentiles — and are also fired as separate locust request
events by :func:`fire_locust_events` so locust's console, CSV and web UI show them.

This module does not import locust or gevent.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Locust event names (the "Name" column); the request type column is the protocol.
EVENT_TTFT = "ttft"
EVENT_TPOT = "tpot"
EVENT_CHUNK_GAP = "chunk_gap"  # named "itl" before the TPOT event existed
EVENT_E2E = "e2e"
EVENT_OUTPUT_TOKENS = "output_tokens"
EVENT_TOKENS_PER_S = "output_tokens_per_s"
EVENT_NAMES = (EVENT_TTFT, EVENT_TPOT, EVENT_CHUNK_GAP, EVENT_E2E, EVENT_OUTPUT_TOKENS, EVENT_TOKENS_PER_S)


@dataclass
class StreamRecord:
    """What one streamed request measured. Times are seconds (wall clock ``start``/``end``)."""

    protocol: str
    model: str
    prompt_id: str
    start: float  # time.time() when the request was sent
    end: float  # time.time() when the last response (or the error) arrived
    input_chars: int
    input_tokens: int | None  # tokens of the text the load generator sent (gateway: the user message only)
    max_tokens: int
    ttft: float | None  # seconds from send to the first non-empty chunk
    itls: list[float] = field(default_factory=list)  # chunk gaps: seconds between consecutive non-empty chunks
    e2e: float = 0.0
    chunks: int = 0  # non-empty streamed chunks
    output_tokens: int = 0  # tokenizer count of the output text, or `chunks` without a tokenizer
    output_chars: int = 0
    concurrency: int = 0  # requests in flight in this process when this one started
    error: str | None = None
    prompt_tokens: int | None = None  # what the model received: the rendered prompt (template, system prompt)
    prompt_tokens_source: str = ""  # "server" (usage.prompt_tokens), "tokenizer" (counted here) or "" (unknown)
    warmup: bool = False  # sent during the warm-up: kept in the records, left out of every figure

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first: ``(e2e - ttft) / (output_tokens - 1)`` (seconds); None for a
        failed request or one with fewer than two output tokens."""
        if self.error is not None or self.ttft is None or self.output_tokens < 2:
            return None
        return max(0.0, self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def tokens_per_s(self) -> float | None:
        """Output tokens per second of this request (decode phase included, TTFT included)."""
        if self.error is not None or self.e2e <= 0 or self.output_tokens == 0:
            return None
        return self.output_tokens / self.e2e

    def to_json(self) -> str:
        data = asdict(self)
        data["itls"] = [round(x, 6) for x in self.itls]
        tpot = self.tpot
        data["tpot"] = None if tpot is None else round(tpot, 6)  # derived; ignored when read back
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


class ServerTokenCount:
    """Generated tokens a stream's responses covered, when the server says so: the BLS's ``num_output_tokens``
    (a response covering several tokens when the server is saturated); absent, a text response is one token.
    ``total`` is None unless some response carried the count (then the tokenizer count is used, as before)."""

    def __init__(self) -> None:
        self.count = 0
        self.told = False

    def add(self, value) -> None:
        if isinstance(value, list):
            value = value[0] if len(value) == 1 else None
        if value is None:
            self.count += 1
        else:
            self.told = True
            self.count += int(value)

    @property
    def total(self) -> int | None:
        return self.count if self.told else None


class StreamTimer:
    """Times one streamed request. Call :meth:`chunk` for every streamed piece, then :meth:`finish`.

    ``clock`` is a monotonic clock (``time.perf_counter`` by default); injectable for tests.
    """

    def __init__(
        self,
        *,
        protocol: str,
        model: str,
        prompt_id: str,
        input_chars: int,
        input_tokens: int | None,
        max_tokens: int,
        concurrency: int = 0,
        prompt_tokens: int | None = None,
        warmup: bool = False,
        on_chunk: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._clock = clock
        self._on_chunk = on_chunk
        self._t0 = clock()
        self._wall0 = time.time()
        self._last: float | None = None
        self._first: float | None = None
        self._itls: list[float] = []
        self._parts: list[str] = []
        self._chunks = 0
        self._meta = dict(
            protocol=protocol,
            model=model,
            prompt_id=prompt_id,
            input_chars=input_chars,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            concurrency=concurrency,
            prompt_tokens=prompt_tokens,
            prompt_tokens_source="tokenizer" if prompt_tokens is not None else "",
            warmup=warmup,
        )

    def chunk(self, text: str) -> None:
        """Record one streamed piece of output text; empty pieces carry no token and are not timed."""
        if not text:
            return
        now = self._clock()
        if self._first is None:
            self._first = now
        else:
            self._itls.append(now - self._last)  # type: ignore[operator]
        self._last = now
        self._chunks += 1
        self._parts.append(text)
        if self._on_chunk is not None:
            self._on_chunk()

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def server_prompt_tokens(self, count: int | None) -> None:
        """The server's own prompt token count (``usage.prompt_tokens``); replaces the local count when > 0."""
        if count:
            self._meta["prompt_tokens"] = int(count)
            self._meta["prompt_tokens_source"] = "server"

    def finish(
        self, *, error: str | None = None, count_tokens: Callable[[str], int] | None = None
    ) -> StreamRecord:
        """Close the request. ``count_tokens`` maps the full output text to its token count."""
        now = self._clock()
        text = self.text
        if error is None and self._chunks == 0:
            error = "stream finished without any output text"
        tokens = self._chunks
        if count_tokens is not None and text:
            tokens = count_tokens(text)
        return StreamRecord(
            **self._meta,  # type: ignore[arg-type]
            start=self._wall0,
            end=self._wall0 + (now - self._t0),
            ttft=None if self._first is None else self._first - self._t0,
            itls=list(self._itls),
            e2e=now - self._t0,
            chunks=self._chunks,
            output_tokens=tokens,
            output_chars=len(text),
            error=error,
        )


def fire_locust_events(fire: Callable[..., Any], record: StreamRecord) -> None:
    """Report ``record`` through a locust ``environment.events.request.fire``.

    Each measure is its own event name so locust's tables keep them apart; latencies are in ms,
    ``output_tokens`` and ``output_tokens_per_s`` are reported in the response-time column (their
    unit is then tokens and tokens/s, not ms). A failed request is one ``e2e`` failure carrying the
    server's message. Warm-up requests fire nothing.
    """
    rtype = record.protocol
    if record.warmup:
        return
    if record.error is not None:
        fire(
            request_type=rtype,
            name=EVENT_E2E,
            response_time=record.e2e * 1000.0,
            response_length=record.output_chars,
            exception=RuntimeError(record.error),
            context={},
        )
        return
    common = dict(request_type=rtype, response_length=0, exception=None, context={})
    if record.ttft is not None:
        fire(name=EVENT_TTFT, response_time=record.ttft * 1000.0, **common)
    tpot = record.tpot
    if tpot is not None:
        fire(name=EVENT_TPOT, response_time=tpot * 1000.0, **common)
    for gap in record.itls:
        fire(name=EVENT_CHUNK_GAP, response_time=gap * 1000.0, **common)
    fire(
        request_type=rtype,
        name=EVENT_E2E,
        response_time=record.e2e * 1000.0,
        response_length=record.output_chars,
        exception=None,
        context={},
    )
    fire(name=EVENT_OUTPUT_TOKENS, response_time=float(record.output_tokens), **common)
    tps = record.tokens_per_s
    if tps is not None:
        fire(name=EVENT_TOKENS_PER_S, response_time=tps, **common)


class RecordWriter:
    """Appends records to ``<directory>/records-<pid>.jsonl`` (one file per locust process)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / f"records-{os.getpid()}.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, record: StreamRecord) -> None:
        with self._lock:
            self._file.write(record.to_json() + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_records(paths: Iterable[str | os.PathLike[str]]) -> list[StreamRecord]:
    """Load records from JSONL files (a torn last line of a killed process is skipped)."""
    records: list[StreamRecord] = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    records.append(StreamRecord.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError):
                    continue
    records.sort(key=lambda r: r.start)
    return records
