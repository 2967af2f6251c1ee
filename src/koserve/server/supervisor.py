"""``koserve serve``'s watchdog: notice a dead tritonserver or python stub, restart it (bounded), or give up.

Triton 2.51 neither restarts a dead python stub nor ends the streams that were waiting on it, so the supervisor
restarts the whole server when a stub dies or tritonserver exits on its own: at most ``max_restarts`` times within
``window_s`` seconds; one more fault and it stops, marks the health state ``failed`` (``/health/live`` → 503) and
returns :data:`EXIT_GAVE_UP` (or tritonserver's own non-zero exit code), so the container exits and Kubernetes
restarts the pod. A restart ends every stream in flight with a connection error (clients see ``UNAVAILABLE``), which
is how a stream that waits on a dead stub ends.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from dataclasses import dataclass

from koserve.server.health import HealthState, Prober, StubWatch

EXIT_GAVE_UP = 3
DEFAULT_MAX_RESTARTS = 3
DEFAULT_RESTART_WINDOW_S = 600.0
DEFAULT_RESTART_GRACE_S = 5.0
POLL_S = 0.25


@dataclass(frozen=True)
class RestartPolicy:
    """At most ``max_restarts`` restarts within any ``window_s`` seconds (0: never restart)."""

    max_restarts: int = DEFAULT_MAX_RESTARTS
    window_s: float = DEFAULT_RESTART_WINDOW_S
    grace_s: float = DEFAULT_RESTART_GRACE_S

    def allows(self, history: deque, now: float) -> bool:
        while history and now - history[0] > self.window_s:
            history.popleft()
        return len(history) < self.max_restarts


def _say(message: str) -> None:
    print(f"koserve: {message}", file=sys.stderr, flush=True)


class Supervisor:
    """Watches a started :class:`~koserve.server.tritonserver.TritonServer` and keeps ``state`` true."""

    def __init__(self, server, state: HealthState, *, policy: RestartPolicy, ready_timeout: float,
                 prober: Prober | None = None, poll_s: float = POLL_S, stop: threading.Event | None = None):
        self.server, self.state, self.policy = server, state, policy
        self.ready_timeout, self.prober, self.poll_s = ready_timeout, prober, poll_s
        self.stop = stop if stop is not None else threading.Event()  # set: return 0 (koserve serve drains)
        self._history: deque = deque()

    def serving(self) -> None:
        """The server just became ready: watch its stubs, probe now."""
        self.watch = StubWatch(self.server.process.pid)
        self.state.set_phase("serving", dead_stubs=[])
        if self.prober is not None:
            self.prober.probe_now()

    def fault(self) -> tuple[str, list[str], int | None] | None:
        """(what is wrong, dead stubs, tritonserver's exit code or None) or None when all is well."""
        code = self.server.process.poll()
        if code is not None:
            return f"tritonserver exited with code {code}", [], code
        dead = self.watch.dead()
        if dead:
            return f"python stub(s) died: {', '.join(dead)}", dead, None
        return None

    def run(self) -> int:
        """Block until ``stop`` is set (returns 0) or the server breaks beyond what restarts fix; the exit code for
        ``koserve serve``."""
        from koserve.server.tritonserver import TritonStartError  # noqa: PLC0415

        self.serving()
        while True:
            if self.stop.is_set():
                return 0
            found = self.fault()
            if found is None:
                self.stop.wait(self.poll_s)
                continue
            reason, dead, code = found
            _say(reason)
            while True:
                now = time.monotonic()
                if not self.policy.allows(self._history, now):
                    limit = f"{self.policy.max_restarts} restart(s) within {self.policy.window_s:.0f} s"
                    self.state.set_phase("failed", f"{reason}; gave up after {limit}", dead)
                    _say(f"giving up ({limit} already): exiting")
                    return code if code else EXIT_GAVE_UP
                self._history.append(now)
                self.state.restarts += 1
                self.state.set_phase("restarting", reason, dead)
                _say(f"restarting tritonserver (restart {self.state.restarts})")
                try:
                    self.server.restart(self.ready_timeout, grace=self.policy.grace_s)
                except TritonStartError as exc:
                    reason, dead, code = f"restart failed: {exc}", [], None
                    _say(reason)
                    continue
                _say("tritonserver is ready again")
                self.serving()
                break
