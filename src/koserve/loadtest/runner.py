"""Run locust headless as a subprocess and turn its output into a report folder.

locust monkey-patches the standard library with gevent on import, so it never runs inside the
caller's process: :func:`run_loadtest` starts ``python -m locust`` on koserve's locustfile, bounded
in time (shape duration + per-request timeout + a grace period, then killed) and in requests
(``max_requests``), and talking only to ``url``. While it runs, live progress is printed from the
records and status files the locust processes write (:mod:`koserve.loadtest.progress`); the report
says why the run ended (``end_reason``: duration, max_requests, interrupted, time_limit, error).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from koserve.errors import ConfigError, KoserveError
from koserve.loadtest.metrics import read_records
from koserve.loadtest.durations import format_duration
from koserve.loadtest.options import to_locust_flags
from koserve.loadtest.progress import ProgressMonitor
from koserve.loadtest.report import SLO, load_generator_usage, write_report
from koserve.loadtest.shapes import SHAPE_KINDS, build_shape

USER_CLASSES = {"grpc": "TritonGrpcUser", "http": "TritonHttpUser", "openai": "OpenAIChatUser"}
LOCUSTFILE = Path(__file__).with_name("locustfile.py")


class LoadTestError(KoserveError):
    """locust did not run (the message carries the end of its log)."""


@dataclass
class LoadTestConfig:
    url: str  # grpc: host:port (or grpc://host:port); http/openai: http://host:port
    out_dir: Path
    protocol: str = "grpc"
    target_model: str = "ensemble"
    profile: str = "akallama-70b"
    openai_model: str = ""
    prompts: str = "all"
    isl: int = 128
    isl_stddev: float = 0.0
    osl: int = 128
    osl_stddev: float = 0.0
    ignore_eos: bool = False
    seed: int = 0
    tokenizer: str = "auto"
    shape: str = "fixed"
    duration: float = 60.0  # seconds of measured load (after the warm-up)
    warmup: float = 0.0  # seconds of warm-up before the measured load (requests sent then are not measured)
    warmup_requests: int = 0  # the first N requests are warm-up (within the duration)
    concurrency: int = 1
    ramp_rate: float = 0.0
    step_users: int = 1
    step_duration: float = 10.0
    max_users: int = 0
    request_rate: float = 1.0
    max_requests: int = 100_000
    request_timeout: float = 60.0
    metrics_url: str | None = "auto"  # Triton metrics endpoint; "auto": <url host>:8002/metrics; None: skip
    processes: int = 1  # locust worker processes on this machine (distributed mode); 1 = single process
    plots: bool = True
    slos: list[SLO] = field(default_factory=list)
    extra_locust_args: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.protocol not in USER_CLASSES:
            raise ConfigError(f"protocol must be one of {', '.join(USER_CLASSES)}; got {self.protocol!r}")
        if self.shape not in SHAPE_KINDS:
            raise ConfigError(f"shape must be one of {', '.join(SHAPE_KINDS)}; got {self.shape!r}")
        if not 0 < self.duration <= 24 * 3600:
            raise ConfigError(f"duration must be in (0, 86400] seconds; got {self.duration}")
        if not 0 <= self.warmup <= 3600:
            raise ConfigError(f"warmup must be in [0, 3600] seconds; got {self.warmup}")
        if self.warmup_requests < 0:
            raise ConfigError(f"warmup_requests must be >= 0; got {self.warmup_requests}")
        if self.max_requests < 1:
            raise ConfigError(f"max_requests must be >= 1 (every run is bounded); got {self.max_requests}")
        if self.request_timeout <= 0:
            raise ConfigError(f"request_timeout must be > 0; got {self.request_timeout}")
        if self.processes < 1:
            raise ConfigError(f"processes must be >= 1; got {self.processes}")
        self.load_shape()

    def planned_duration(self) -> float:
        """Seconds the load shape runs: warm-up + measured duration."""
        return self.warmup + self.duration

    def load_shape(self):
        return build_shape(self.shape, duration=self.planned_duration(), concurrency=self.concurrency,
                           spawn_rate=self.ramp_rate, step_users=self.step_users, step_duration=self.step_duration,
                           max_users=self.max_users or None, request_rate=self.request_rate)

    def resolved_metrics_url(self) -> str | None:
        if self.metrics_url in (None, "", "none"):
            return None
        if self.metrics_url != "auto":
            return self.metrics_url
        if self.protocol == "openai":
            return self.http_url().rstrip("/") + "/metrics"
        host = urlsplit(self.http_url()).hostname or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:8002/metrics"

    def http_url(self) -> str:
        return self.url if "://" in self.url else f"http://{self.url}"

    def locust_host(self) -> str:
        if self.protocol == "grpc":
            parts = urlsplit(self.http_url())
            return parts.netloc
        return self.url

    def hard_timeout(self) -> float:
        """Seconds after which the locust process is killed no matter what."""
        return self.planned_duration() + self.request_timeout + 30.0


def scrape(url: str | None, timeout: float = 5.0) -> tuple[str | None, str | None]:
    """(text, error) of one GET of a Prometheus endpoint."""
    if not url:
        return None, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - URL given by the user
            return resp.read().decode("utf-8", errors="replace"), None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return None, f"{url}: {exc}"


def scrape_warning(cfg: LoadTestConfig, error: str) -> str:
    """The console line for a failed metrics scrape: the report goes without server metrics, and how to fix it."""
    how = ("give --metrics-url with the metrics address `koserve serve` printed (its ports are free ports on CPU), "
           "or --metrics-url none")
    if cfg.metrics_url == "auto" and cfg.protocol != "openai":
        how = f"--metrics-url auto guessed port 8002; {how}"
    return f"koserve: warning: cannot read the server's metrics ({error}): the report has no server metrics; {how}"


def locust_command(cfg: LoadTestConfig, records_dir: Path, *, echo: bool = False) -> list[str]:
    """The locust command line; with ``echo`` locust prints its periodic stats too (no ``--only-summary``)."""
    per_process = max(1, cfg.processes)
    flags = to_locust_flags(
        {
            "target_model": cfg.target_model,
            "model_profile": cfg.profile,
            "openai_model": cfg.openai_model or None,
            "prompts": cfg.prompts,
            "isl": cfg.isl,
            "isl_stddev": cfg.isl_stddev,
            "osl": cfg.osl,
            "osl_stddev": cfg.osl_stddev,
            "ignore_eos": cfg.ignore_eos,
            "seed": cfg.seed,
            "tokenizer": cfg.tokenizer,
            "max_requests": math.ceil(cfg.max_requests / per_process),
            "warmup_seconds": f"{cfg.warmup:g}",
            "warmup_requests": math.ceil(cfg.warmup_requests / per_process),
            "request_timeout": cfg.request_timeout,
            "records_dir": str(records_dir),
            "shape": cfg.shape,
            "shape_duration": f"{cfg.planned_duration():g}",
            "concurrency": cfg.concurrency,
            "ramp_rate": cfg.ramp_rate,
            "step_users": cfg.step_users,
            "step_duration": cfg.step_duration,
            "max_users": cfg.max_users,
            "request_rate": cfg.request_rate / per_process,
        }
    )
    out = cfg.out_dir
    cmd = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--host", cfg.locust_host(),
        "--csv", str(out / "locust"),
        "--csv-full-history",
        "--html", str(out / "locust.html"),
        *([] if echo else ["--only-summary"]),
        "--exit-code-on-error", "0",
        "--stop-timeout", str(int(math.ceil(cfg.request_timeout))),
        *flags,
    ]
    if cfg.processes > 1:
        cmd += ["--processes", str(cfg.processes)]
    cmd += list(cfg.extra_locust_args)
    cmd.append(USER_CLASSES[cfg.protocol])
    return cmd


@dataclass
class LoadTestResult:
    out_dir: Path
    summary: dict[str, Any]
    returncode: int
    killed: bool
    end_reason: str = ""
    end_detail: str = ""

    @property
    def slos_passed(self) -> bool:
        return bool(self.summary.get("slos_passed", True))


def end_of_run(cfg: LoadTestConfig, *, returncode: int, killed: bool, interrupted: bool,
               statuses: list[dict[str, Any]], elapsed: float) -> tuple[str, str]:
    """``(end_reason, sentence)``: why the run ended."""
    took = format_duration(elapsed)
    if interrupted:
        return "interrupted", f"interrupted (Ctrl-C) after {took}; the figures cover the requests finished by then"
    if killed:
        return "time_limit", (f"error: locust had not stopped {format_duration(cfg.hard_timeout())} after the start "
                              "(planned duration + request timeout + 30 s) and was killed")
    if any(st.get("stop_reason") == "max_requests" for st in statuses):
        return "max_requests", f"--max-requests {cfg.max_requests} reached after {took}"
    if returncode != 0:
        return "error", f"error: locust exited with code {returncode} after {took} (see locust.log)"
    return "duration", f"the planned duration of {format_duration(cfg.planned_duration())} ran out" + (
        f" ({format_duration(cfg.warmup)} warm-up + {format_duration(cfg.duration)} measured)" if cfg.warmup else "")


def run_loadtest(cfg: LoadTestConfig, *, echo: bool = False, progress: bool = True,
                 progress_stream=None) -> LoadTestResult:
    """Run locust headless with ``cfg`` and write the report folder ``cfg.out_dir``.

    ``progress``: print live progress to ``progress_stream`` (default stderr): a bar on a terminal, plain lines
    every 5 s otherwise (and with ``echo``, whose locust output would break a bar). Ctrl-C stops locust and still
    writes the report of what finished."""
    cfg.validate()
    out = Path(cfg.out_dir)
    records_dir = out / "records"
    if records_dir.exists():
        shutil.rmtree(records_dir)
    records_dir.mkdir(parents=True)
    stream = progress_stream if progress_stream is not None else sys.stderr
    metrics_url = cfg.resolved_metrics_url()
    before, before_err = scrape(metrics_url)
    if before is not None:
        (out / "metrics-before.prom").write_text(before, encoding="utf-8")
    elif before_err:
        print(scrape_warning(cfg, before_err), file=stream, flush=True)

    cmd = locust_command(cfg, records_dir, echo=echo)
    (out / "locust-command.txt").write_text(" ".join(cmd) + "\n", encoding="utf-8")
    log_path = out / "locust.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    killed = interrupted = False
    monitor = None
    if progress:
        tty = bool(getattr(stream, "isatty", lambda: False)()) and not echo
        monitor = ProgressMonitor(records_dir, cfg.planned_duration(), stream, tty=tty)
    t0 = time.monotonic()
    deadline = t0 + cfg.hard_timeout()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=None if echo else log, stderr=subprocess.STDOUT if not echo else None,
            env=env, start_new_session=True,
        )
        try:
            while True:
                try:
                    returncode = proc.wait(timeout=max(0.05, min(1.0, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() >= deadline:
                    killed = True
                    _kill_group(proc)
                    returncode = proc.wait(timeout=30)
                    break
                if monitor is not None:
                    monitor.poll()
        except KeyboardInterrupt:
            interrupted = True
            _kill_group(proc)  # SIGTERM first: locust stops its users and writes its CSVs
            returncode = proc.wait(timeout=30)
        except BaseException:
            _kill_group(proc)
            proc.wait(timeout=30)
            raise
        finally:
            if monitor is not None:
                monitor.poll(force=True)
                monitor.close()
    elapsed = time.monotonic() - t0
    statuses = monitor.statuses if monitor is not None else _statuses(records_dir)
    end_reason, end_detail = end_of_run(cfg, returncode=returncode, killed=killed, interrupted=interrupted,
                                        statuses=statuses, elapsed=elapsed)

    after, after_err = scrape(metrics_url)
    if after is not None:
        (out / "metrics-after.prom").write_text(after, encoding="utf-8")
    records = read_records(sorted(records_dir.glob("records-*.jsonl")))
    if not records and interrupted:
        raise KeyboardInterrupt
    if not records and (returncode != 0 or killed):
        raise LoadTestError(
            f"locust exited with code {returncode}{' (killed at the time limit)' if killed else ''} "
            f"and recorded no request; end of {log_path}:\n{_tail(log_path)}"
        )
    meta = {
        "end_reason": end_reason,
        "end_detail": end_detail,
        "protocol": cfg.protocol,
        "url": cfg.url,
        "target_model": cfg.target_model if cfg.protocol != "openai" else (cfg.openai_model or cfg.profile),
        "profile": cfg.profile,
        "prompts": cfg.prompts if cfg.prompts != "synthetic" else
        f"synthetic isl={cfg.isl}±{cfg.isl_stddev:g}",
        "osl": f"{cfg.osl}±{cfg.osl_stddev:g}",
        "shape": cfg.load_shape().describe(),
        "planned_duration_s": cfg.planned_duration(),
        "warmup_s": cfg.warmup,
        "warmup_requests_planned": cfg.warmup_requests,
        "max_requests": cfg.max_requests,
        "locust_processes": cfg.processes,
        "locust_exit_code": returncode,
        "wall_time_s": round(elapsed, 2),
    }
    if killed:
        meta["killed_at_time_limit"] = True
    for err in (before_err, after_err):
        if err:
            meta.setdefault("metrics_scrape_errors", []).append(err)
    processes = []
    for path in sorted(records_dir.glob("process-*.json")):
        try:
            processes.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    summary = write_report(
        out, records, meta=meta, generator=load_generator_usage(processes), slos=cfg.slos,
        metrics_before=before, metrics_after=after, plots=cfg.plots,
    )
    summary_cfg = asdict(cfg)
    summary_cfg["out_dir"] = str(cfg.out_dir)
    summary_cfg["slos"] = [s.text for s in cfg.slos]
    (out / "config.json").write_text(json.dumps(summary_cfg, indent=2, ensure_ascii=False) + "\n")
    return LoadTestResult(out, summary, returncode, killed, end_reason, end_detail)


def _statuses(records_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(records_dir.glob("status-*.json")):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
