"""Health that tells the truth: python-stub watch, real one-token probes, and the ``/health/*`` endpoints.

Triton 2.51 does not restart a python stub that died (kill -9, OOM) and keeps answering ``/v2/health/ready`` 200
while every request to that model fails or hangs. ``koserve serve`` therefore watches for itself:

- :class:`StubWatch` — the ``triton_python_backend_stub`` processes under tritonserver (its descendants, so mpirun
  ranks are covered), one per model instance (``postprocessing_0_0``...), recorded once the server is ready; a stub
  that is gone, a zombie or replaced counts as dead.
- :class:`Prober` — every ``interval`` s a bounded one-token request through each text model
  (``ensemble``, ``tensorrt_llm_bls``), ``timeout`` s at most.
- :class:`HealthState` — what both found plus the supervisor's phase; :func:`serve_health` answers
  ``GET /health/ready`` (200 only when serving, every stub alive and every model's last probe succeeded within
  ``interval + timeout`` s; else 503) and ``GET /health/live`` (200 unless the server is broken beyond recovery),
  both with a JSON body that says why.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"
TEXT_MODELS = ("ensemble", "tensorrt_llm_bls")
DEFAULT_HEALTH_PORT = 8003
DEFAULT_PROBE_INTERVAL_S = 5.0
DEFAULT_PROBE_TIMEOUT_S = 10.0
PROBE_PROMPT = "ping"
PROBE_ID_PREFIX = "koserve-health-"


# -- processes ---------------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of ``pid``; None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def descendants(root: int) -> list[int]:
    """Every live (non-zombie) descendant of ``root``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] != "Z":
                children.setdefault(st[1], []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


@dataclass(frozen=True)
class StubProcess:
    """One python-backend stub: ``instance`` is Triton's instance name (``postprocessing_0_0``), ``model`` its model."""

    pid: int
    instance: str

    @property
    def model(self) -> str:
        parts = self.instance.rsplit("_", 2)
        return parts[0] if len(parts) == 3 else self.instance


def stub_processes(server_pid: int) -> list[StubProcess]:
    """The python stubs under ``server_pid`` (argv: binary, model.py, shm region, sizes, parent pid, backend dir,
    ipc size, instance name, execution env)."""
    stubs = []
    for pid in descendants(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(STUB_BINARY.encode()) and len(argv) > 8:
            stubs.append(StubProcess(pid, argv[8].decode(errors="replace")))
    return stubs


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class StubWatch:
    """Remembers the stubs of a ready server; :meth:`dead` names those that died since."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.stubs = {s.instance: s.pid for s in stub_processes(server_pid)}

    def dead(self) -> list[str]:
        dead = []
        for instance, pid in self.stubs.items():
            st = _stat(pid)
            if st is None or st[0] == "Z" or st[1] != self.server_pid and self.server_pid not in _ancestors(pid):
                dead.append(instance)
        return sorted(dead)


def _ancestors(pid: int, limit: int = 8) -> list[int]:
    out = []
    for _ in range(limit):
        st = _stat(pid)
        if st is None or st[1] <= 1:
            break
        pid = st[1]
        out.append(pid)
    return out


# -- probes ------------------------------------------------------------------------------------------------------
@dataclass
class ProbeResult:
    ok: bool
    at: float  # time.monotonic() when it finished
    seconds: float
    error: str | None = None


def probe_model(url: str, model: str, timeout: float) -> ProbeResult:
    """One one-token request to ``model``; ok when it ends with no error within ``timeout``. ``url``:
    ``host:port`` (gRPC ``stream_infer``) or ``http://host:port`` (HTTP ``generate_stream``). It asks for no
    streaming: that works on a decoupled repository and on one rendered ``--engine-not-decoupled`` (which refuses
    ``stream=true``) alike, and still passes through every step of the model."""
    from koserve.server.triton_calls import grpc_stream, http_generate_stream, text_inputs  # noqa: PLC0415

    t0 = time.monotonic()
    request_id = f"{PROBE_ID_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        if url.startswith("http"):
            res = http_generate_stream(url, model, {"text_input": PROBE_PROMPT, "max_tokens": 1, "stream": False},
                                       timeout=timeout, request_id=request_id)
        else:
            res = grpc_stream(url, model, text_inputs(PROBE_PROMPT, 1, stream=False), request_id=request_id,
                              timeout=timeout)
        error = res.error
    except Exception as exc:  # noqa: BLE001 - any failure is a failed probe
        error = f"{type(exc).__name__}: {exc}"
    now = time.monotonic()
    return ProbeResult(error is None, now, now - t0, None if error is None else error.strip()[:500])


class Prober:
    """A thread that probes each model every ``interval`` s and reports to ``state``."""

    def __init__(self, state: "HealthState", url: str, models: tuple[str, ...], *,
                 interval: float = DEFAULT_PROBE_INTERVAL_S, timeout: float = DEFAULT_PROBE_TIMEOUT_S):
        self.state, self.url, self.models = state, url, models
        self.interval, self.timeout = interval, timeout
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="koserve-health-probe", daemon=True)

    def start(self) -> "Prober":
        self._thread.start()
        return self

    def probe_now(self) -> None:
        """Probe at once (after a restart) instead of at the end of the current interval."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.state.phase == "serving":
                for model in self.models:
                    if self._stop.is_set():
                        return
                    self.state.record_probe(model, probe_model(self.url, model, self.timeout))
            self._wake.wait(self.interval)
            self._wake.clear()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.timeout + 2)


# -- state and endpoints -----------------------------------------------------------------------------------------
PHASES = ("starting", "serving", "restarting", "failed", "draining", "stopping")


@dataclass
class HealthState:
    """What the supervisor, the stub watch and the prober know; thread-safe."""

    models: tuple[str, ...] = ()
    probe_interval: float = DEFAULT_PROBE_INTERVAL_S
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT_S
    phase: str = "starting"
    reason: str = ""
    dead_stubs: list[str] = field(default_factory=list)
    restarts: int = 0
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_phase(self, phase: str, reason: str = "", dead_stubs: list[str] | None = None) -> None:
        assert phase in PHASES, phase
        with self._lock:
            self.phase, self.reason = phase, reason
            if dead_stubs is not None:
                self.dead_stubs = list(dead_stubs)
            if phase in ("starting", "restarting"):
                self.probes = {}  # a new server: no probe result of the old one counts

    def record_probe(self, model: str, result: ProbeResult) -> None:
        with self._lock:
            if self.phase == "serving":
                self.probes[model] = result

    @property
    def fresh_for(self) -> float:
        """How long a successful probe keeps a model ready (one interval plus one probe's time)."""
        return self.probe_interval + self.probe_timeout

    def readiness(self) -> tuple[bool, dict]:
        now = time.monotonic()
        with self._lock:
            problems = []
            if self.phase != "serving":
                problems.append(f"server is {self.phase}" + (f": {self.reason}" if self.reason else ""))
            if self.dead_stubs:
                problems.append(f"python stub(s) dead: {', '.join(self.dead_stubs)}")
            models = {}
            for model in self.models:
                res = self.probes.get(model)
                if res is None:
                    models[model] = {"ok": False, "error": "not probed yet"}
                elif not res.ok:
                    models[model] = {"ok": False, "error": res.error, "age_s": round(now - res.at, 1)}
                elif now - res.at > self.fresh_for:
                    models[model] = {"ok": False, "error": f"last successful probe {now - res.at:.0f} s ago",
                                     "age_s": round(now - res.at, 1)}
                else:
                    models[model] = {"ok": True, "age_s": round(now - res.at, 1),
                                     "latency_ms": round(res.seconds * 1000, 1)}
            problems += [f"{m}: {v['error']}" for m, v in models.items() if not v["ok"]]
            body = {"ready": not problems, "phase": self.phase, "models": models, "dead_stubs": self.dead_stubs,
                    "restarts": self.restarts, "problems": problems}
        return not problems, body

    def liveness(self) -> tuple[bool, dict]:
        with self._lock:
            alive = self.phase != "failed"
            return alive, {"live": alive, "phase": self.phase, "reason": self.reason, "restarts": self.restarts}


def serve_health(state: HealthState, host: str, port: int):
    """Answer ``/health/ready`` and ``/health/live`` on ``host:port`` in a daemon thread; returns the
    ``ThreadingHTTPServer`` (``shutdown()`` it). 200 when healthy, 503 when not, 404 elsewhere; JSON bodies."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: PLC0415 - keep CLI start fast

    class HealthHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/health/ready":
                ok, body = state.readiness()
            elif path == "/health/live":
                ok, body = state.liveness()
            else:
                self._send(404, {"error": f"unknown path {path!r}; use /health/ready or /health/live"})
                return
            self._send(200 if ok else 503, body)

        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args) -> None:  # noqa: A002 - probed every few seconds: no access log
            pass

    server = ThreadingHTTPServer((host, port), HealthHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="koserve-health-http", daemon=True).start()
    return server


def text_models_in(repo: Path) -> tuple[str, ...]:
    """The text models (``ensemble``, ``tensorrt_llm_bls``) a rendered repository has."""
    return tuple(m for m in TEXT_MODELS if (Path(repo) / m / "config.pbtxt").is_file())
