"""``ChatResult`` and the assembly of server responses into text, stop handling, counts and timings."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


class Piece(NamedTuple):
    """One server response: its text (``None``: it has none) and how many generated tokens it covers (``None``:
    one when it has text — every ensemble response; the BLS says ``num_output_tokens`` when it is not one)."""

    text: bytes | str | None
    tokens: int | None = None


def token_count(value: Any) -> int | None:
    """``num_output_tokens`` of a response as an int (``None`` when absent or not a number)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if len(value) == 1 else None
    try:
        return None if value is None or isinstance(value, bool) else int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ChatResult:
    """One finished (or cancelled) generation.

    ``text`` is what the model said, with stop strings and anything after them removed.
    ``finish_reason``: ``stop`` (end id or a stop string), ``length`` (``max_tokens`` reached), ``cancelled``
    (the caller closed the stream early). Times are seconds from sending the request: ``ttft`` is the first
    response, ``token_times`` one entry per generated token, the arrival of the response that carried it (a BLS
    response covering several tokens gives them the same time).
    Token counts are ``None`` when they cannot be known (see the client docs). ``seed`` is the sampling seed sent
    (the caller's, or the one drawn for this request when sampling without one; ``None`` for greedy decoding):
    pass it back as ``seed=`` to repeat a generation.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int | None
    completion_tokens: int | None
    ttft: float | None
    token_times: tuple[float, ...]
    total_time: float
    request_id: str
    model: str
    stop_string: str | None = None
    prompt: str = field(default="", repr=False)
    seed: int | None = None
    tool_calls: tuple[dict, ...] = ()  # with tools=: the OpenAI-shaped call the answer made (finish_reason tool_calls)

    @property
    def inter_token_latencies(self) -> tuple[float, ...]:
        """Gaps between consecutive tokens' arrivals (seconds; 0 between tokens of one response)."""
        t = self.token_times
        return tuple(b - a for a, b in zip(t, t[1:]))

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed after the first token (``None`` with fewer than two timed tokens)."""
        t = self.token_times
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return (len(t) - 1) / (t[-1] - t[0])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (times in milliseconds)."""
        ms = lambda s: None if s is None else round(s * 1000.0, 3)  # noqa: E731
        itl = self.inter_token_latencies
        tps = self.tokens_per_second
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "ttft_ms": ms(self.ttft),
            "total_ms": ms(self.total_time),
            "mean_inter_token_ms": ms(sum(itl) / len(itl)) if itl else None,
            "tokens_per_second": None if tps is None else round(tps, 2),
            "token_times_ms": [ms(t) for t in self.token_times],
            "request_id": self.request_id,
            "model": self.model,
            "stop_string": self.stop_string,
            "seed": self.seed,
        }


class ResponseAssembler:
    """Feeds each server response through UTF-8 decoding and the stop-string matcher; records timings.

    ``add(payload)`` returns the text that is safe to show now (a stop string split across responses is held back
    until it is known not to be one, and never shown when it is).
    """

    def __init__(self, stop_strings: tuple[str, ...] | list[str], *, started: float | None = None):
        self.started = time.perf_counter() if started is None else started
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        if stop_strings:
            from koserve.text.stop_strings import StopStringMatcher  # noqa: PLC0415

            self._matcher = StopStringMatcher(list(stop_strings))
        else:
            self._matcher = None
        self._emitted: list[str] = []
        self._raw: list[str] = []
        self.token_times: list[float] = []
        self.responses = 0
        self.tokens = 0  # generated tokens the responses covered
        self.finished = False

    @property
    def stopped(self) -> bool:
        """A stop string was seen: nothing more will be emitted."""
        return self._matcher is not None and self._matcher.stopped

    @property
    def matched(self) -> str | None:
        return self._matcher.matched if self._matcher is not None else None

    def add(self, payload: bytes | str | None, tokens: int | None = None) -> str:
        """One server response (``payload`` None: a response without text, e.g. an empty final one) covering
        ``tokens`` generated tokens (None: one when it has text)."""
        if payload is None and not tokens:
            return ""
        n = (1 if payload is not None else 0) if tokens is None else max(0, tokens)
        self.token_times.extend([time.perf_counter() - self.started] * n)
        self.responses += 1
        self.tokens += n
        if payload is None:
            return ""
        text = self._decoder.decode(payload) if isinstance(payload, bytes) else payload
        return self._feed(text)

    def _feed(self, text: str) -> str:
        if not text or self.stopped:
            if text:
                self._raw.append(text)
            return ""
        self._raw.append(text)
        safe = self._matcher.feed(text) if self._matcher is not None else text
        if safe:
            self._emitted.append(safe)
        return safe

    def finish(self) -> str:
        """End of the response stream: flush anything held back."""
        if self.finished:
            return ""
        self.finished = True
        tail = self._feed(self._decoder.decode(b"", final=True))
        if self._matcher is not None and not self._matcher.stopped:
            rest = self._matcher.finish()
            if rest:
                self._emitted.append(rest)
                tail += rest
        return tail

    @property
    def text(self) -> str:
        return "".join(self._emitted)

    @property
    def raw_text(self) -> str:
        """Everything the server sent, stop strings included."""
        return "".join(self._raw)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
