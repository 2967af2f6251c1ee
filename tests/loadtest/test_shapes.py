"""Load shapes: fixed concurrency, step ramp, Poisson arrivals (seeded), and their refusals."""

from __future__ import annotations

import statistics

import pytest

from koserve.errors import ConfigError
from koserve.loadtest.shapes import FixedConcurrency, PoissonArrivals, PoissonRate, StepRamp, build_shape


def test_fixed_concurrency_holds_then_stops():
    shape = FixedConcurrency(users=8, duration=30)
    assert shape.tick(0) == (8, 8.0)
    assert shape.tick(29.9) == (8, 8.0)
    assert shape.tick(30) is None


def test_step_ramp_adds_users_per_step_up_to_the_ceiling():
    shape = StepRamp(start=2, step=3, step_duration=10, max_users=9, duration=60)
    assert [shape.tick(t)[0] for t in (0, 9.9, 10, 20, 30, 59)] == [2, 2, 5, 8, 9, 9]
    assert shape.tick(60) is None


def test_poisson_shape_keeps_the_in_flight_cap():
    shape = PoissonRate(rate=5, max_concurrency=16, duration=10)
    assert shape.tick(3) == (16, 16.0)
    assert shape.tick(10) is None


def test_poisson_arrivals_are_seeded_and_have_the_requested_rate():
    now = [0.0]
    arrivals = PoissonArrivals(rate=4.0, seed=7, clock=lambda: now[0])
    delays = [arrivals.next_delay() for _ in range(4000)]  # clock stands still: delay = arrival time
    gaps = [b - a for a, b in zip(delays, delays[1:])]
    assert delays[0] == 0.0
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.06)
    # exponential gaps: standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.1)
    again = PoissonArrivals(rate=4.0, seed=7, clock=lambda: 0.0)
    assert [again.next_delay() for _ in range(50)] == delays[:50]
    # a late caller gets 0, never a negative delay
    now[0] = 10_000.0
    assert arrivals.next_delay() == 0.0


@pytest.mark.parametrize(
    "kind,kwargs,msg",
    [
        ("fixed", dict(concurrency=0), "users must be > 0"),
        ("step", dict(concurrency=4, max_users=2), "max_users"),
        ("poisson", dict(request_rate=0), "rate must be > 0"),
        ("burst", {}, "fixed, step, poisson"),
    ],
)
def test_bad_shapes_name_the_problem(kind, kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        build_shape(kind, duration=10, **kwargs)
