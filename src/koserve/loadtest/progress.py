"""Live progress of a running load test, read from the files the locust processes write.

Every locust process appends one JSON line per finished request to ``records-<pid>.jsonl`` and replaces
``status-<pid>.json`` every second (requests started, in flight, chunks streamed, why it stopped). The
:class:`ProgressMonitor` reads only what is new, and prints a progress bar (a terminal) or a plain line (anything
else, at most every ``interval`` seconds): elapsed / planned time, requests done and failed, in flight, current
output tokens/s and TTFT p50.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from koserve.loadtest.durations import format_duration
from koserve.loadtest.metrics import StreamRecord
from koserve.loadtest.report import percentile

RATE_WINDOW_S = 5.0  # "current" output tokens/s: the last few seconds


class RecordTail:
    """Reads the complete new lines of ``records-*.jsonl`` and the latest ``status-*.json`` of a records folder."""

    def __init__(self, records_dir: Path) -> None:
        self.records_dir = Path(records_dir)
        self._offsets: dict[Path, int] = {}

    def new_records(self) -> list[StreamRecord]:
        out: list[StreamRecord] = []
        for path in sorted(self.records_dir.glob("records-*.jsonl")):
            offset = self._offsets.get(path, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
            self._offsets[path] = offset + end
            for line in data[:end].splitlines():
                try:
                    out.append(StreamRecord.from_dict(json.loads(line)))
                except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
                    continue
        return out

    def statuses(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.records_dir.glob("status-*.json")):
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
        return out


@dataclass
class ProgressState:
    """What one progress line shows."""

    elapsed: float
    planned: float
    done: int  # measured requests finished
    failed: int
    warmup: int  # warm-up requests finished
    in_flight: int | None
    tokens_per_s: float | None
    ttft_p50_ms: float | None
    started: bool  # the locust process is up (it wrote a status file)

    def line(self) -> str:
        if not self.started:
            return f"{format_duration(self.elapsed)}  starting locust"
        parts = [f"{format_duration(self.elapsed)}/{format_duration(self.planned)}",
                 f"done {self.done}" + (f" (+{self.warmup} warm-up)" if self.warmup else ""),
                 f"failed {self.failed}",
                 f"in flight {'–' if self.in_flight is None else self.in_flight}",
                 f"{'–' if self.tokens_per_s is None else f'{self.tokens_per_s:,.0f}'} output tok/s",
                 f"TTFT p50 {'–' if self.ttft_p50_ms is None else f'{self.ttft_p50_ms:,.0f} ms'}"]
        return "  ".join(parts)


class ProgressMonitor:
    """Call :meth:`poll` often (about once a second); it prints when it is time to."""

    def __init__(self, records_dir: Path, planned_s: float, stream: IO[str], *, tty: bool,
                 interval: float = 5.0, clock=time.monotonic, wall=time.time) -> None:
        self.tail = RecordTail(records_dir)
        self.planned = planned_s
        self.stream = stream
        self.tty = tty
        self.interval = interval if not tty else 1.0
        self._clock = clock
        self._wall = wall
        self._t_origin = clock()
        self._t_started: float | None = None
        self._next_print = self._t_origin + min(self.interval, 2.0)
        self._ttfts: list[float] = []
        self._done = self._failed = self._warmup = 0
        self._tokens = 0
        self._chunks = 0
        self._chunk_history: deque[tuple[float, int]] = deque()
        self._finished_tokens: deque[tuple[float, int]] = deque()
        self._drawn = False
        self.statuses: list[dict[str, Any]] = []

    def state(self) -> ProgressState:
        now = self._clock()
        for r in self.tail.new_records():
            if r.warmup:
                self._warmup += 1
                continue
            self._done += 1
            if not r.ok:
                self._failed += 1
                continue
            if r.ttft is not None:
                self._ttfts.append(r.ttft)
            self._tokens += r.output_tokens
            self._chunks += r.chunks
            self._finished_tokens.append((now, r.output_tokens))
        self.statuses = self.tail.statuses()
        if self.statuses and self._t_started is None:
            # the locust process wrote its start time (wall clock); without it: when its first status appeared
            since = [float(st["since"]) for st in self.statuses if st.get("since")]
            self._t_started = now - max(0.0, self._wall() - min(since)) if since else now
        in_flight = sum(int(s.get("in_flight", 0)) for s in self.statuses) if self.statuses else None
        chunks = sum(int(s.get("chunks", 0)) for s in self.statuses) if self.statuses else None
        return ProgressState(
            elapsed=now - (self._t_started if self._t_started is not None else self._t_origin),
            planned=self.planned,
            done=self._done,
            failed=self._failed,
            warmup=self._warmup,
            in_flight=in_flight,
            tokens_per_s=self._rate(now, chunks),
            ttft_p50_ms=None if not self._ttfts else percentile(self._ttfts, 50) * 1000.0,
            started=self._t_started is not None,
        )

    def _rate(self, now: float, chunks: int | None) -> float | None:
        """Output tokens/s over the last RATE_WINDOW_S: chunks streamed (in-flight requests included) times the
        tokens per chunk of the finished requests; without status files, finished requests' tokens."""
        if chunks is not None:
            hist = self._chunk_history
            hist.append((now, chunks))
            while len(hist) > 2 and now - hist[1][0] >= RATE_WINDOW_S:
                hist.popleft()
            (t_a, c_a), (t_b, c_b) = hist[0], hist[-1]
            if t_b - t_a < 0.5:
                return None
            per_chunk = self._tokens / self._chunks if self._chunks else 1.0
            return max(0, c_b - c_a) * per_chunk / (t_b - t_a)
        fin = self._finished_tokens
        while fin and now - fin[0][0] > RATE_WINDOW_S:
            fin.popleft()
        return sum(n for _, n in fin) / RATE_WINDOW_S if fin else None

    def poll(self, *, force: bool = False) -> ProgressState | None:
        now = self._clock()
        if not force and now < self._next_print:
            return None
        self._next_print = now + self.interval
        state = self.state()
        if self.tty:
            self.stream.write("\r\x1b[K" + _bar(state) + "  " + state.line())
            self._drawn = True
        else:
            self.stream.write("loadtest: " + state.line() + "\n")
        self.stream.flush()
        return state

    def close(self) -> None:
        """End the progress bar's line (a terminal)."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _bar(state: ProgressState, width: int = 24) -> str:
    frac = 0.0 if not state.planned else min(1.0, max(0.0, state.elapsed / state.planned))
    full = int(round(frac * width))
    return "[" + "#" * full + "." * (width - full) + "]"
