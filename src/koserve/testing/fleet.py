"""Several ``koserve serve`` replicas behind one ``koserve gateway``, each a real process on fixed ports: the
harness of tests/fleet and scripts/reliability_report.py (rolling restarts, drains, a replica killed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from koserve.server.tritonserver import free_ports
from koserve.testing.faults import ServeProcess, get_json


@dataclass
class Replica:
    """One ``koserve serve`` that can be stopped and started again on the same ports."""

    repo: Path
    log_dir: Path
    ports: tuple[int, int, int, int]  # http, grpc, metrics, health
    extra: tuple[str, ...] = ()
    process: ServeProcess | None = None
    starts: int = 0

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports[1]}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[2]}/metrics"

    def start(self) -> ServeProcess:
        http, grpc, metrics, health = self.ports
        self.starts += 1
        log = self.log_dir / f"serve-{self.ports[1]}-{self.starts}.log"
        cmd = [sys.executable, "-m", "koserve", "serve", "--repo", str(self.repo), "--quiet",
               f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", f"--health-port={health}",
               *self.extra, "--", "--exit-timeout-secs=5"]
        fh = open(log, "wb")  # noqa: SIM115 - the child writes it
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.process = ServeProcess(proc, http, grpc, metrics, health, log)
        return self.process

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.proc.poll() is None:
            self.process.proc.send_signal(sig)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.process.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)


def replicas(repo: Path, log_dir: Path, n: int, *extra: str) -> list[Replica]:
    return [Replica(repo, log_dir, tuple(free_ports(4)), tuple(extra)) for _ in range(n)]


@dataclass
class Gateway:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def health(self) -> tuple[int | None, dict]:
        return get_json(f"{self.url}/health", timeout=5)

    def wait_ready(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited ({self.proc.returncode}):\n{self.output()}")
            status, body = self.health()
            if status == 200:
                return body
            time.sleep(0.3)
        raise AssertionError(f"gateway not ready after {timeout} s: {body}\n{self.output()}")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


def start_gateway(model: str, urls: list[str], log: Path, *extra: str) -> Gateway:
    """``koserve gateway --model MODEL=URL1|URL2...`` on a free port."""
    port = free_ports(1)[0]
    cmd = [sys.executable, "-m", "koserve", "gateway", "--model", f"{model}={'|'.join(urls)}",
           f"--port={port}", "--log-level=warning", *extra]
    fh = open(log, "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ})
    return Gateway(proc, port, log)


@dataclass
class RestartFigures:
    """One replica's SIGTERM restart under load."""

    replica: str
    exit_code: int | None
    exit_s: float | None  # SIGTERM → koserve serve exited
    ready_again_s: float | None  # SIGTERM → /health/ready 200 again (after a start on the same ports)
    drain_line: str  # what koserve serve printed about its drain
    under_load: bool = True  # the load generator was still running when the SIGTERM was sent


@dataclass
class RollingRestartFigures:
    requests: int
    succeeded: int
    failed: int
    errors: list
    restarts: list[RestartFigures]
    replicas: dict  # the gateway's /health "replicas" (served / refused per address)
    load_seconds: float


def _drain_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("koserve: drained")]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def run_rolling_restart(work: Path, *, duration: str = "50s", concurrency: int = 4, max_tokens: int = 48,
                        replay_delay_ms: float = 10.0, ready_timeout: float = 240.0,
                        settle_s: float = 4.0) -> RollingRestartFigures:
    """Two replicas behind one gateway under ``koserve loadtest`` (OpenAI protocol, streaming); each replica in turn
    gets SIGTERM, exits after its drain, starts again on the same ports and becomes ready; the load runs on."""
    from koserve.testing.faults import render_replay_repo  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    repo = render_replay_repo(work / "repo", replay_delay_ms=replay_delay_ms)
    group = replicas(repo, work, 2)
    gateway = None
    load = None
    try:
        for r in group:
            r.start()
        for r in group:
            r.process.wait_ready(ready_timeout)
        gateway = start_gateway("akallama-70b", [r.grpc_url for r in group], work / "gateway.log")
        gateway.wait_ready(60)
        out = work / "loadtest"
        load_cmd = [sys.executable, "-m", "koserve", "loadtest", "--protocol", "openai", "--url", gateway.url,
                    "--profile", "akallama-70b", "--duration", duration, "--concurrency", str(concurrency),
                    "--max-tokens", str(max_tokens), "--request-timeout", "30s", "--metrics-url", "none",
                    "--prompts", "short", "--no-plots", "--no-progress", "--out", str(out)]
        t_load = time.monotonic()
        load = subprocess.Popen(load_cmd, stdout=open(work / "loadtest.log", "wb"),  # noqa: SIM115
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # locust has started: requests reach both replicas
            _, health = gateway.health()
            served = [v.get("served", 0) for v in health.get("replicas", {}).get("akallama-70b", {}).values()]
            if len(served) == 2 and min(served) >= 2:
                break
            time.sleep(0.2)
        time.sleep(settle_s)
        restarts = []
        for r in group:
            t0 = time.monotonic()
            old_log = r.process.log
            under_load = load.poll() is None
            r.signal(signal.SIGTERM)
            code = r.wait_exit(120)
            exit_s = time.monotonic() - t0 if code is not None else None
            if code is None:
                r.process.stop(timeout=5)
            r.start()
            r.process.wait_ready(ready_timeout)
            restarts.append(RestartFigures(r.grpc_url, code, exit_s, time.monotonic() - t0, _drain_line(old_log),
                                           under_load))
            time.sleep(settle_s)
        restarted_within = time.monotonic() - t_load
        load.wait(timeout=300)
        summary = _read_json(out / "summary.json")
        _, health = gateway.health()
        return RollingRestartFigures(
            requests=summary.get("requests", 0), succeeded=summary.get("succeeded", 0),
            failed=summary.get("failed", 0), errors=summary.get("errors", []), restarts=restarts,
            replicas=health.get("replicas", {}).get("akallama-70b", {}), load_seconds=restarted_within,
        )
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(timeout=10)
        if gateway is not None:
            gateway.stop()
        for r in group:
            r.stop()


def _read_json(path: Path) -> dict:
    import json  # noqa: PLC0415

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@dataclass
class StreamOutcome:
    """One OpenAI streaming request through the gateway."""

    text: str = ""
    done: bool = False  # ended with data: [DONE]
    error: str | None = None  # the in-band error event's message, or the HTTP error
    status: int | None = None
    seconds: float = 0.0


def openai_stream(gateway_url: str, model: str, prompt: str, max_tokens: int, timeout: float = 60.0) -> StreamOutcome:
    """``POST /v1/chat/completions`` with ``stream: true`` read to its end (httpx, bounded by ``timeout``)."""
    import json  # noqa: PLC0415

    import httpx  # noqa: PLC0415

    out = StreamOutcome()
    t0 = time.monotonic()
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}]}
    try:
        with httpx.stream("POST", f"{gateway_url}/v1/chat/completions", json=body, timeout=timeout) as resp:
            out.status = resp.status_code
            if resp.status_code != 200:
                resp.read()
                out.error = resp.text
                return out
            for line in resp.iter_lines():
                if time.monotonic() - t0 > timeout:
                    out.error = f"timeout after {timeout} s"
                    break
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    out.done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    out.error = event["error"].get("message", str(event["error"]))
                    break
                for choice in event.get("choices", []):
                    out.text += (choice.get("delta") or {}).get("content") or ""
    except httpx.HTTPError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        out.seconds = time.monotonic() - t0
    return out


@dataclass
class KillFigures:
    """A replica's ``koserve serve`` killed with SIGKILL while streams run through the gateway."""

    streams: list[StreamOutcome]  # started before the kill
    after: list[StreamOutcome]  # started after the kill, one after another, for ``probe_s`` seconds
    hung: int  # streams still running when the bound ran out
    first_ok_after_s: float | None  # kill → the first request started after it that succeeded


def run_replica_kill(work: Path, *, streams: int = 6, max_tokens: int = 150, replay_delay_ms: float = 20.0,
                     probe_s: float = 4.0, ready_timeout: float = 240.0, bound_s: float = 60.0) -> KillFigures:
    """Two replicas behind one gateway; ``streams`` long streams start, then the first replica's koserve serve is
    killed with SIGKILL (its reaper takes tritonserver down at once); new requests keep coming for ``probe_s``."""
    import threading  # noqa: PLC0415

    from koserve.testing.faults import render_replay_repo  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    repo = render_replay_repo(work / "repo", replay_delay_ms=replay_delay_ms)
    group = replicas(repo, work, 2)
    gateway = None
    try:
        for r in group:
            r.start()
        for r in group:
            r.process.wait_ready(ready_timeout)
        gateway = start_gateway("akallama-70b", [r.grpc_url for r in group], work / "gateway.log")
        gateway.wait_ready(60)
        outcomes = [StreamOutcome() for _ in range(streams)]

        def run(i: int) -> None:
            outcomes[i] = openai_stream(gateway.url, "akallama-70b", f"이야기 {i}", max_tokens, timeout=bound_s)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(streams)]
        for t in threads:
            t.start()
        from koserve.server.drain import read_engine_load  # noqa: PLC0415

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # streams run on both replicas (each engine reports them)
            loads = [read_engine_load(r.metrics_url) for r in group]
            if all(load is not None and load.active >= 1 for load in loads):
                break
            time.sleep(0.05)
        killed_at = time.monotonic()
        group[0].process.proc.kill()
        after: list[StreamOutcome] = []
        first_ok = None
        while time.monotonic() - killed_at < probe_s:
            started = time.monotonic()
            outcome = openai_stream(gateway.url, "akallama-70b", "안녕", 4, timeout=30)
            after.append(outcome)
            if first_ok is None and outcome.done:
                first_ok = started - killed_at
        deadline = time.monotonic() + bound_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        hung = sum(t.is_alive() for t in threads)
        group[0].process.proc.wait(timeout=10)
        return KillFigures(outcomes, after, hung, first_ok)
    finally:
        if gateway is not None:
            gateway.stop()
        for r in group:
            r.stop()


@dataclass
class DrainFigures:
    """``koserve serve`` getting SIGTERM with streams in flight through ``ensemble`` and ``tensorrt_llm_bls``."""

    whole: dict  # model -> streams that ended whole
    cut: dict  # model -> streams that ended with an error (first error kept in ``errors``)
    errors: list
    refusal: str | None  # what a new request got during the drain
    unready_after_s: float | None
    exit_code: int | None
    exit_after_s: float | None


def run_drain(work: Path, *, per_model: int = 8, tokens: int = 100, replay_delay_ms: float = 20.0,
              signal_after_s: float = 1.0, ready_timeout: float = 240.0) -> DrainFigures:
    """The measurement of issue 30 against today's ``koserve serve``: streams in flight, SIGTERM, a new request."""
    import threading  # noqa: PLC0415

    from koserve.server.triton_calls import grpc_stream, text_inputs  # noqa: PLC0415
    from koserve.testing.faults import render_replay_repo, start_serve  # noqa: PLC0415

    work.mkdir(parents=True, exist_ok=True)
    repo = render_replay_repo(work / "repo", replay_delay_ms=replay_delay_ms)
    serve = start_serve(repo, work / "serve.log")
    try:
        serve.wait_ready(ready_timeout)
        results: dict = {}

        def run(model: str, i: int) -> None:
            results[(model, i)] = grpc_stream(serve.grpc_url, model, text_inputs("안녕하세요", tokens), timeout=60,
                                              request_id=f"drain-{model}-{i}")  # with an id: streamed token by token

        models = ("ensemble", "tensorrt_llm_bls")
        threads = [threading.Thread(target=run, args=(m, i)) for m in models for i in range(per_model)]
        for t in threads:
            t.start()
        time.sleep(signal_after_s)
        t0 = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        unready, _ = serve.wait_not_ready(10)
        time.sleep(0.3)
        refused = grpc_stream(serve.grpc_url, "ensemble", text_inputs("새 요청", 4), timeout=10)
        for t in threads:
            t.join(90)
        try:
            code = serve.proc.wait(timeout=90)
            exit_after = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            code, exit_after = None, None
    finally:
        serve.stop()
    whole = {m: sum(1 for (k, _), r in results.items() if k == m and r.error is None and r.token_count == tokens)
             for m in models}
    cut = {m: sum(1 for (k, _), r in results.items() if k == m and r.error is not None) for m in models}
    errors = sorted({r.error for r in results.values() if r.error})
    return DrainFigures(whole, cut, errors, refused.error, unready, code, exit_after)
