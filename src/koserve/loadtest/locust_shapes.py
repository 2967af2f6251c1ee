"""Locust ``LoadTestShape`` classes for the koserve shapes (imports locust: use inside locustfiles).

:class:`KoserveShape` reads ``--shape`` and the other koserve options (see
:mod:`koserve.loadtest.options`) and delegates to :mod:`koserve.loadtest.shapes`. The three named
subclasses fix the kind for locustfiles of your own. Locust uses the first ``LoadTestShape`` it
finds in a locustfile, so import this module, not the classes, next to a shape of your own.
"""

from __future__ import annotations

from locust import LoadTestShape

from koserve.loadtest.shapes import build_shape


class KoserveShape(LoadTestShape):
    """The shape selected by ``--shape fixed|step|poisson`` (Poisson arrivals are timed by the users)."""

    kind: str | None = None  # None: take --shape

    def _schedule(self):
        schedule = getattr(self, "_built", None)
        if schedule is None:
            o = self.runner.environment.parsed_options
            schedule = self._built = build_shape(
                self.kind or o.shape,
                duration=o.shape_duration,
                concurrency=o.concurrency,
                spawn_rate=o.ramp_rate,
                step_users=o.step_users,
                step_duration=o.step_duration,
                max_users=o.max_users or None,
                request_rate=o.request_rate,
            )
        return schedule

    def tick(self):
        return self._schedule().tick(self.get_run_time())


class FixedConcurrencyShape(KoserveShape):
    kind = "fixed"


class StepRampShape(KoserveShape):
    kind = "step"


class PoissonRateShape(KoserveShape):
    kind = "poisson"
