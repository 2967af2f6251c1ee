"""Fault injection against a real ``koserve serve``: start the CLI in a subprocess, find its tritonserver and python
stubs, read its health endpoints, and check what a dead server left behind (processes, listening ports, shm regions).
Used by tests/serving/test_faults.py, test_health.py, test_reaper.py, test_supervisor.py and scripts/reliability_report.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from koserve.server.health import stub_processes
from koserve.server.tritonserver import SHM_DIR, free_ports

LIMITS = {"max_input_len": 384, "max_seq_len": 512}


def render_replay_repo(out: Path, *, profile: str = "akallama-70b", replay_delay_ms: float = 0.0,
                       engine_backend: str = "trtllm") -> Path:
    """A CPU replay repository (small limits: errors are cheap to provoke); ``engine_backend`` as
    ``koserve repo render --engine-backend``."""
    from koserve.fixtures import tokenizer_dir  # noqa: PLC0415
    from koserve.repo.render import RenderOptions, render_repository  # noqa: PLC0415

    family = {"akallama-70b": "llama3", "komt-13b": "llama2"}[profile]
    rendered = render_repository(RenderOptions(
        profile=profile, tokenizer_dir=tokenizer_dir(family), out=out, replay=True,
        replay_delay_ms=replay_delay_ms, engine_backend=engine_backend, force=True, **LIMITS,
    ))
    return rendered.path


def get_json(url: str, timeout: float = 2.0) -> tuple[int | None, dict]:
    """(HTTP status or None when nothing answers, JSON body)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (urllib.error.URLError, OSError, ValueError):
        return None, {}


@dataclass
class ServeProcess:
    """A running ``koserve serve`` (the real CLI in a subprocess)."""

    proc: subprocess.Popen
    http_port: int
    grpc_port: int
    metrics_port: int
    health_port: int
    log: Path

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}/health"

    def ready(self) -> tuple[int | None, dict]:
        return get_json(f"{self.health_url}/ready")

    def live(self) -> tuple[int | None, dict]:
        return get_json(f"{self.health_url}/live")

    def wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"koserve serve exited ({self.proc.returncode}):\n{self.output()}")
            status, body = self.ready()
            if status == 200:
                return body
            time.sleep(0.2)
        raise AssertionError(f"not ready after {timeout} s: {body}\n{self.output()}")

    def wait_not_ready(self, timeout: float) -> tuple[float, dict]:
        """Seconds until /health/ready stopped answering 200, and its body then."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            status, body = self.ready()
            if status != 200:
                return time.monotonic() - t0, body
            time.sleep(0.1)
        raise AssertionError(f"/health/ready still 200 after {timeout} s")

    def tritonserver_pid(self) -> int | None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                argv0 = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if int(stat[1]) == self.proc.pid and argv0.endswith(b"tritonserver") and stat[0] != "Z":
                return int(name)
        return None

    def shm_prefix(self) -> str:
        pid = self.tritonserver_pid()
        assert pid is not None, "no tritonserver under koserve serve"
        for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            if b"shm-region-prefix-name=" in arg:
                return arg.decode().split("shm-region-prefix-name=", 1)[1]
        raise AssertionError("tritonserver has no shm-region-prefix-name")

    def stub_pid(self, instance: str) -> int:
        pid = self.tritonserver_pid()
        assert pid is not None
        for stub in stub_processes(pid):
            if stub.instance == instance:
                return stub.pid
        raise AssertionError(f"no stub {instance} under tritonserver {pid}")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start_serve(repo: Path, log: Path, *extra: str, env: dict | None = None) -> ServeProcess:
    """``koserve serve --repo REPO`` on free ports with a health port; ``extra`` = more CLI arguments."""
    http, grpc, metrics, health = free_ports(4)
    cmd = [sys.executable, "-m", "koserve", "serve", "--repo", str(repo), "--quiet",
           f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", f"--health-port={health}",
           *extra, "--", "--exit-timeout-secs=2"]
    fh = open(log, "wb")  # noqa: SIM115 - the child writes it; closed with the file object at exit
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    return ServeProcess(proc, http, grpc, metrics, health, log)


def live_processes_with(marker: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``marker``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(name))
    return pids


def shm_regions(prefix: str) -> list[str]:
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(prefix)) if SHM_DIR.is_dir() else []


def port_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (a server could bind it now)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine; a listener is not
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_until(check, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


