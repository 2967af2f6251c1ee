"""Faults against the real ``koserve serve`` (issue 18 §1, §3): a killed python stub of each kind, a SIGKILLed launcher.

Each test runs its own ``koserve serve`` subprocess (never the shared session servers) on a replay repository, and
checks from outside: ``/health/ready`` turns 503 within seconds, the stream in flight ends (no hang), the server is
restarted and serves again; a SIGKILLed launcher leaves no tritonserver, stub, port or shm region behind."""

from __future__ import annotations

import json
import os
import threading
import uuid
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from koserve.fixtures import tokenizer_dir
from koserve.serving.health import stub_processes
from koserve.serving.rawclient import grpc_stream, text_inputs
from koserve.serving.render import RenderOptions, render_repository
from koserve.serving.tritonserver import SHM_DIR, free_ports

LIMITS = {"max_input_len": 384, "max_seq_len": 512}


def render_replay_repo(out: Path, *, profile: str = "akallama-70b", replay_delay_ms: float = 0.0) -> Path:
    family = {"akallama-70b": "llama3", "komt-13b": "llama2"}[profile]
    rendered = render_repository(RenderOptions(
        profile=profile, tokenizer_dir=tokenizer_dir(family), out=out, replay=True,
        replay_delay_ms=replay_delay_ms, force=True, **LIMITS,
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
    import socket  # noqa: PLC0415

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


# -- tests -------------------------------------------------------------------------------------------------------
READY_TIMEOUT = 240.0  # a loaded 2-core machine can take a while to start 4 python stubs
NOT_READY_WITHIN = 5.0  # seconds from kill -9 to /health/ready != 200
STREAM_ENDS_WITHIN = 60.0


def _ok(serve: ServeProcess, model: str) -> bool:
    res = grpc_stream(serve.grpc_url, model, text_inputs("안녕?", 4), request_id=uuid.uuid4().hex, timeout=30)
    return res.error is None and bool(res.text)


@pytest.fixture
def replay_repo(tmp_path):
    # 20 ms per token: a 200-token stream is in flight for ~4 s, long enough to kill a stub under it
    return render_replay_repo(tmp_path / "repo", replay_delay_ms=20.0)


@pytest.mark.timeout(900)
def test_killed_stub_of_each_kind_turns_unready_ends_streams_and_recovers_then_serve_gives_up(replay_repo, tmp_path):
    cases = [("postprocessing_0_0", "ensemble"), ("tensorrt_llm_bls_0_0", "tensorrt_llm_bls"),
             ("tensorrt_llm_0_0", "ensemble"), ("preprocessing_0_0", "ensemble")]  # stub killed, stream in flight
    serve = start_serve(replay_repo, tmp_path / "serve.log", "--probe-interval=1", "--probe-timeout=5",
                        f"--max-restarts={len(cases)}", "--restart-window=3600", "--restart-grace=2")
    try:
        body = serve.wait_ready(READY_TIMEOUT)
        assert set(body["models"]) == {"ensemble", "tensorrt_llm_bls"} and body["restarts"] == 0
        assert serve.live()[0] == 200
        for restarts, (instance, model) in enumerate(cases, start=1):
            started = threading.Event()
            outcome: dict = {}

            def stream(model=model, started=started, outcome=outcome):
                outcome["res"] = grpc_stream(serve.grpc_url, model, text_inputs("안녕하세요", 200),
                                             request_id=uuid.uuid4().hex, timeout=STREAM_ENDS_WITHIN + 30,
                                             on_piece=lambda _p: started.set())
                outcome["at"] = time.monotonic()

            t = threading.Thread(target=stream, daemon=True)
            t.start()
            assert started.wait(30), f"{model}: no first piece"
            os.kill(serve.stub_pid(instance), signal.SIGKILL)
            killed_at = time.monotonic()
            _took, body = serve.wait_not_ready(NOT_READY_WITHIN)
            assert body["ready"] is False and body["problems"], body
            t.join(STREAM_ENDS_WITHIN)
            assert not t.is_alive(), f"kill {instance}: the {model} stream in flight never ended"
            res = outcome["res"]
            assert res.error is not None and "timeout" not in res.error, (instance, res.error, res.text)
            assert outcome["at"] - killed_at < STREAM_ENDS_WITHIN
            body = serve.wait_ready(READY_TIMEOUT)
            assert body["restarts"] == restarts, body
            assert all(_ok(serve, m) for m in ("ensemble", "tensorrt_llm_bls")), f"after {instance} died"
            assert serve.live()[0] == 200
        assert "python stub(s) died: preprocessing_0_0" in serve.output()
        prefix = serve.shm_prefix()
        # restarts used up: the next dead stub makes koserve serve exit 3 (the pod restarts)
        os.kill(serve.stub_pid("postprocessing_0_0"), signal.SIGKILL)
        serve.proc.wait(timeout=60)
    finally:
        serve.stop()
    assert serve.proc.returncode == 3, serve.output()
    assert "giving up" in serve.output()
    assert wait_until(lambda: not live_processes_with(prefix), 15)
    assert shm_regions(prefix) == []


@pytest.mark.timeout(600)
def test_sigkill_of_koserve_serve_takes_tritonserver_stubs_ports_and_shm_with_it(replay_repo, tmp_path):
    serve = start_serve(replay_repo, tmp_path / "serve.log")
    try:
        serve.wait_ready(READY_TIMEOUT)
        prefix = serve.shm_prefix()
        triton = serve.tritonserver_pid()
        stubs = stub_processes(triton)
        assert len(stubs) == 4 and shm_regions(prefix), "4 stubs with their shm regions while serving"
        serve.proc.send_signal(signal.SIGKILL)
        serve.proc.wait(timeout=10)
        assert wait_until(lambda: not live_processes_with(prefix), 15), \
            f"left running: {live_processes_with(prefix)}"
        assert wait_until(lambda: all(port_free(p) for p in (serve.http_port, serve.grpc_port,
                                                             serve.metrics_port, serve.health_port)), 15)
        assert wait_until(lambda: shm_regions(prefix) == [], 15), shm_regions(prefix)
    finally:
        serve.stop()
