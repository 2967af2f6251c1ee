"""``koserve gateway --workers N``: N gateway processes sharing one listening socket.

The parent binds the socket, starts N spawned workers (each the whole gateway: its own clients, tokenizer and drain
on SIGTERM), forwards SIGTERM/SIGINT to them and waits for their drains; a worker that dies is replaced (at most
:data:`MAX_RESTARTS` in :data:`RESTART_WINDOW_S`, then the gateway exits 1 for its supervisor to restart). Metrics:
every worker writes to ``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder unless set) and ``/metrics`` on any worker
sums all of them (:mod:`koserve.gateway.metrics`). The kernel spreads new connections over the workers; a
keep-alive connection stays with its worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from koserve.gateway.metrics import MULTIPROC_ENV

log = logging.getLogger("koserve.gateway")

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
EXTRA_STOP_S = 15.0  # after the drain grace: how long to wait for a worker before killing it


@dataclass
class WorkerSpec:
    """What each worker needs to build the gateway itself (picklable: workers are spawned)."""

    config_path: str | None
    model_specs: list[str]
    overrides: dict[str, Any]
    host: str
    port: int
    log_level: str
    grace_s: float
    env: dict[str, str] = field(default_factory=dict)


def _worker(spec: WorkerSpec, sock) -> None:
    os.environ.update(spec.env)
    logging.basicConfig(level=spec.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    from koserve.gateway import create_app, load_config  # noqa: PLC0415
    from koserve.gateway.drain import run_gateway  # noqa: PLC0415

    config = load_config(spec.config_path, model_specs=spec.model_specs, **spec.overrides)
    run_gateway(create_app(config), host=spec.host, port=spec.port, log_level=spec.log_level,
                grace_s=spec.grace_s, sockets=[sock])


def _bind(host: str, port: int):
    import uvicorn  # noqa: PLC0415

    return uvicorn.Config(app=None, host=host, port=port).bind_socket()


def run_workers(spec: WorkerSpec, workers: int) -> int:
    """Run ``workers`` gateway processes until SIGTERM/SIGINT; the exit status."""
    own_dir = None
    metrics_dir = os.environ.get(MULTIPROC_ENV)
    if not metrics_dir:
        metrics_dir = own_dir = tempfile.mkdtemp(prefix="koserve-gateway-metrics-")
    else:
        for name in os.listdir(metrics_dir):  # values of an earlier run must not be summed in
            if name.endswith(".db"):
                os.unlink(os.path.join(metrics_dir, name))
    spec.env = {**spec.env, MULTIPROC_ENV: metrics_dir}
    os.environ[MULTIPROC_ENV] = metrics_dir
    sock = _bind(spec.host, spec.port)
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def on_signal(_sig, _frame) -> None:
        nonlocal stopping
        if stopping:  # a second signal: the workers exit at once (their own second-signal rule)
            for p in procs:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGTERM)
        stopping = True

    def start() -> multiprocessing.Process:
        p = ctx.Process(target=_worker, args=(spec, sock), name="koserve-gateway-worker")
        p.start()
        return p

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    procs = [start() for _ in range(workers)]
    log.info("gateway: %d workers on %s:%d (pids %s)", workers, spec.host, spec.port, [p.pid for p in procs])
    restarts: list[float] = []
    status = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                if p.is_alive() or stopping:
                    continue
                _mark_dead(p.pid)
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
                if len(restarts) > MAX_RESTARTS:
                    log.error("gateway worker %d exited with %s; %d restarts in %.0f s: giving up", p.pid,
                              p.exitcode, MAX_RESTARTS, RESTART_WINDOW_S)
                    stopping, status = True, 1
                    break
                log.warning("gateway worker %d exited with %s: starting another", p.pid, p.exitcode)
                procs[i] = start()
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)  # each drains (koserve.gateway.drain)
        deadline = time.monotonic() + spec.grace_s + EXTRA_STOP_S
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.error("gateway worker %d did not stop in time: killing it", p.pid)
                p.kill()
                p.join(5)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        sock.close()
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
    return status


def _mark_dead(pid: int | None) -> None:
    """A dead worker's live gauges (requests running, waiting, in flight) leave the sums."""
    if pid is None:
        return
    from prometheus_client import multiprocess  # noqa: PLC0415

    try:
        multiprocess.mark_process_dead(pid)
    except OSError:
        pass
