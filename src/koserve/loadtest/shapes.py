"""Load shapes as plain schedules: run time -> (users, spawn rate), or ``None`` to stop.

Locust's ``LoadTestShape`` wrappers live in :mod:`koserve.loadtest.locust_shapes`; these classes
do not import locust, so they are unit-tested (and used by the CLI) without gevent.

- :class:`FixedConcurrency` — N concurrent streams for the whole run (closed loop: a user sends
  its next request as soon as its previous one finished).
- :class:`StepRamp` — start with ``start`` users, add ``step`` every ``step_duration`` seconds up
  to ``max_users``, hold until the end.
- :class:`PoissonRate` — open loop: requests *start* at exponentially distributed intervals
  (mean ``1/rate``) from one shared, seeded arrival schedule; ``max_concurrency`` users take the
  arrivals. When all of them are busy an arrival waits (its lag shows in TTFT), so choose
  ``max_concurrency`` well above ``rate x expected E2E latency``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

from koserve.errors import ConfigError

ShapeTick = tuple[int, float] | None


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"load shape: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class FixedConcurrency:
    users: int
    duration: float
    spawn_rate: float = 0.0  # users started per second; 0 = all at once

    def __post_init__(self) -> None:
        _positive("users", self.users)
        _positive("duration", self.duration)
        _positive("spawn_rate", self.spawn_rate, allow_zero=True)

    def tick(self, run_time: float) -> ShapeTick:
        if run_time >= self.duration:
            return None
        return self.users, float(self.spawn_rate or self.users)

    def describe(self) -> str:
        return f"fixed concurrency {self.users} for {self.duration:g}s"


@dataclass(frozen=True)
class StepRamp:
    start: int
    step: int
    step_duration: float
    max_users: int
    duration: float
    spawn_rate: float = 0.0

    def __post_init__(self) -> None:
        _positive("start", self.start)
        _positive("step", self.step, allow_zero=True)
        _positive("step_duration", self.step_duration)
        _positive("duration", self.duration)
        if self.max_users < self.start:
            raise ConfigError(f"load shape: max_users ({self.max_users}) must be >= start ({self.start})")

    def users_at(self, run_time: float) -> int:
        steps = int(run_time // self.step_duration)
        return min(self.max_users, self.start + steps * self.step)

    def tick(self, run_time: float) -> ShapeTick:
        if run_time >= self.duration:
            return None
        return self.users_at(run_time), float(self.spawn_rate or max(self.step, self.start))

    def describe(self) -> str:
        return (
            f"step ramp {self.start}+{self.step} every {self.step_duration:g}s up to {self.max_users}, "
            f"{self.duration:g}s"
        )


@dataclass(frozen=True)
class PoissonRate:
    rate: float  # requests started per second (whole run)
    max_concurrency: int
    duration: float

    def __post_init__(self) -> None:
        _positive("rate", self.rate)
        _positive("max_concurrency", self.max_concurrency)
        _positive("duration", self.duration)

    def tick(self, run_time: float) -> ShapeTick:
        if run_time >= self.duration:
            return None
        return self.max_concurrency, float(self.max_concurrency)

    def describe(self) -> str:
        return f"Poisson arrivals {self.rate:g} req/s (at most {self.max_concurrency} in flight), {self.duration:g}s"


class PoissonArrivals:
    """A shared, seeded schedule of Poisson arrival times (seconds after the first call).

    Every :meth:`next_delay` call claims the next arrival and returns how long the caller should
    wait before sending (0 when the arrival is already due). Thread/greenlet safe.
    """

    def __init__(self, rate: float, seed: int = 0, clock=None) -> None:
        import time

        _positive("rate", rate)
        self.rate = rate
        self._rng = random.Random(seed)
        self._clock = clock or time.monotonic
        self._origin: float | None = None
        self._next = 0.0
        self._lock = threading.Lock()

    def next_delay(self) -> float:
        with self._lock:
            now = self._clock()
            if self._origin is None:
                self._origin = now
            due = self._origin + self._next
            self._next += self._rng.expovariate(self.rate)
        return max(0.0, due - now)


def build_shape(
    kind: str,
    *,
    duration: float,
    concurrency: int = 1,
    spawn_rate: float = 0.0,
    step_users: int = 1,
    step_duration: float = 10.0,
    max_users: int | None = None,
    request_rate: float = 1.0,
) -> FixedConcurrency | StepRamp | PoissonRate:
    """Build a shape from CLI-style options (``kind`` is ``fixed``, ``step`` or ``poisson``)."""
    if kind == "fixed":
        return FixedConcurrency(users=concurrency, duration=duration, spawn_rate=spawn_rate)
    if kind == "step":
        return StepRamp(
            start=concurrency,
            step=step_users,
            step_duration=step_duration,
            max_users=max_users if max_users is not None else concurrency + 4 * step_users,
            duration=duration,
            spawn_rate=spawn_rate,
        )
    if kind == "poisson":
        return PoissonRate(
            rate=request_rate,
            max_concurrency=max_users if max_users is not None else max(concurrency, 1),
            duration=duration,
        )
    raise ConfigError(f"load shape must be one of fixed, step, poisson; got {kind!r}")


SHAPE_KINDS = ("fixed", "step", "poisson")
