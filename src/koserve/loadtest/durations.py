"""Durations on the command line: ``90``, ``90s``, ``2m``, ``1h``, ``1h30m`` (like locust's ``-t``), ``500ms``, in
seconds."""

from __future__ import annotations

import argparse
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Seconds of ``text``: a plain number (seconds) or parts such as ``1h30m``, ``2m``, ``90s``, ``0.5s``, ``500ms``.

    Raises ``ValueError`` naming the accepted forms."""
    raw = str(text).strip().lower()
    try:
        return float(raw)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(raw):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(raw) or not raw:
        raise ValueError(f"{text!r} is not a duration: use seconds (90) or 90s, 2m, 1h, 1h30m, 500ms")
    return total


def duration_arg(text: str) -> float:
    """``argparse`` type for durations (an error message argparse prints as it is)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def format_duration(seconds: float) -> str:
    """``75`` → ``1m15s``; ``9.5`` → ``9.5s`` (for progress lines and reports)."""
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 or seconds == int(seconds) else f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"
