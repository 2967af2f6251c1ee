"""Start, watch and stop a real ``tritonserver``.

GPU (production): ``mpirun -n TP×PP`` over the container's ``/opt/tritonserver/bin/tritonserver`` following
TensorRT-LLM's launch pattern (rank 0 serves HTTP/gRPC/metrics; ranks > 0 load only ``tensorrt_llm``; one shm-region
prefix per rank). The CPU test server's command (the Triton 2.51 of the ``nvidia-pytriton`` wheel) is built in
:mod:`koserve.cpu_engine.pytriton_server`; both run under :class:`TritonServer`.

Every server gets its own python-backend shm-region prefix, so the ``/dev/shm`` files it leaks (a stub that dies or
never starts leaves its region behind) are found and removed exactly, without touching other servers' regions.

A server dies with its launcher: tritonserver gets ``PR_SET_PDEATHSIG`` = SIGKILL, and a small reaper process
(:mod:`koserve.server.reaper`) kills the whole process group (stubs, mpirun ranks) and removes the shm regions when
the launcher is gone without having stopped the server (SIGKILL of ``koserve serve``, OOM kill).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from koserve.errors import ConfigError, KoserveError

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
GPU_TRITONSERVER = "/opt/tritonserver/bin/tritonserver"
_counter = itertools.count()


class TritonStartError(KoserveError):
    """tritonserver exited or did not become ready in time (the message carries the end of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (all sockets held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def leaked_shm_regions(prefix: str) -> list[Path]:
    """Python-backend shm files under ``/dev/shm`` that start with ``prefix``."""
    if not SHM_DIR.is_dir():
        return []
    return sorted(p for p in SHM_DIR.iterdir() if p.name.startswith(prefix))


def remove_shm_regions(prefix: str) -> int:
    """Remove leaked shm regions with ``prefix``; returns how many were removed."""
    removed = 0
    for path in leaked_shm_regions(prefix):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def unique_shm_prefix(tag: str = "") -> str:
    """An shm-region prefix unique to this process and call."""
    return f"{SHM_PREFIX}ks{os.getpid()}x{next(_counter)}{tag}_"


# extra tritonserver flags that also go to ranks > 0 (process-wide, no endpoint or model in them); every other extra
# argument reaches rank 0 only: ranks > 0 serve no HTTP/gRPC/metrics and load only tensorrt_llm, so endpoint, model
# repository or model-control flags there would conflict with the flags those ranks need.
ALL_RANK_FLAGS = ("--exit-timeout-secs", "--log-verbose", "--log-info", "--log-warning", "--log-error", "--log-format")


def split_rank_args(extra_args) -> tuple[list[str], list[str]]:
    """``(rank 0 args, args for every other rank)`` from the extra tritonserver arguments."""
    items, others = list(extra_args), []
    for i, arg in enumerate(items):
        key = arg.split("=", 1)[0]
        if key in ALL_RANK_FLAGS:
            others.append(arg)
            if "=" not in arg and i + 1 < len(items) and not items[i + 1].startswith("--"):
                others.append(items[i + 1])
    return items, others


def gpu_command(
    model_repository: Path,
    world_size: int,
    *,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    host: str = "127.0.0.1",
    tritonserver: str = GPU_TRITONSERVER,
    mpirun: str = "mpirun",
    shm_prefix: str = "prefix",
    extra_args: tuple[str, ...] = (),
    log_file_dir: Path | None = None,
    env: "dict[str, str] | None" = None,
) -> list[str]:
    """``mpirun`` argv running one tritonserver per TensorRT-LLM rank (TP×PP).

    ``mpirun`` gets ``--prefix`` and ``-x`` for PATH, LD_LIBRARY_PATH, NCCL_* ... of ``env`` (default os.environ),
    so ranks started over ssh on other nodes see the container's environment (koserve.engines.mpi).

    Rank 0 serves every model and the HTTP/gRPC/metrics endpoints; ranks > 0 run only the ``tensorrt_llm`` model
    (the engine's workers) with no endpoints. Each rank gets its own python-backend shm-region prefix.
    """
    if world_size < 1:
        raise ConfigError(f"world size must be >= 1, got {world_size}")
    rank0_args, other_rank_args = split_rank_args(extra_args)
    from koserve.engines.mpi import mpirun_head  # noqa: PLC0415

    cmd = mpirun_head(mpirun, env)
    for rank in range(world_size):
        part = [
            "-n", "1", tritonserver,
            f"--model-repository={model_repository}",
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}{rank}_",
        ]
        if rank == 0:
            part += [
                f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}",
                f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
            ]
            part += rank0_args
        else:
            part += [
                "--model-control-mode=explicit", "--load-model=tensorrt_llm",
                "--allow-http=false", "--allow-grpc=false", "--allow-metrics=false",
            ]
            part += other_rank_args
        if log_file_dir is not None:
            part.append(f"--log-file={log_file_dir / f'triton_rank{rank}.log'}")
        cmd += part
        if rank != world_size - 1:
            cmd.append(":")
    return cmd


LLMAPI_LAUNCH = "trtllm-llmapi-launch"


def llmapi_command(
    model_repository: Path,
    world_size: int,
    *,
    nodes: int = 1,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    host: str = "127.0.0.1",
    tritonserver: str = GPU_TRITONSERVER,
    mpirun: str = "mpirun",
    launcher: str = LLMAPI_LAUNCH,
    shm_prefix: str = "prefix",
    extra_args: tuple[str, ...] = (),
    log_file_dir: Path | None = None,
    env: "dict[str, str] | None" = None,
) -> list[str]:
    """``mpirun`` argv for a repository whose engine step is the LLM API (``--engine-backend pytorch``).

    One tritonserver, whatever the world size: the LLM API starts its own ranks (TensorRT-LLM 1.2.1, cited in
    tests/engines/data/trtllm-1.2.1-llmapi-contract.json, "launch"):

    - one node: ``mpirun -n 1 tritonserver ...`` (NVIDIA's llmapi guide launches ``launch_triton_server.py`` with its
      default world size 1); ``LLM(tensor_parallel_size=N)`` spawns its N workers itself (``MpiPoolSession``);
    - several nodes: ``mpirun -n TP×PP trtllm-llmapi-launch tritonserver ...`` (``launch_triton_server.py
      --trtllm_llmapi_launch``): on rank 0 the wrapper runs tritonserver (MPI variables cleared) beside
      ``mgmn_leader_node``; every other rank runs ``mgmn_worker_node`` and never starts tritonserver, and the LLM
      in rank 0's stub reaches those ranks through ``TLLM_SPAWN_PROXY_PROCESS``.

    ``mpirun`` forwards the environment as for the engine path (:func:`koserve.engines.mpi.mpirun_head`).
    """
    if world_size < 1 or nodes < 1:
        raise ConfigError(f"world size and nodes must be >= 1, got {world_size} and {nodes}")
    if nodes > 1 and world_size % nodes:
        raise ConfigError(f"world size {world_size} (TP×PP) does not split over {nodes} nodes")
    from koserve.engines.mpi import mpirun_head  # noqa: PLC0415

    ranks = world_size if nodes > 1 else 1
    cmd = mpirun_head(mpirun, env) + ["-n", str(ranks)]
    if nodes > 1:
        cmd.append(launcher)
    cmd += [
        tritonserver, f"--model-repository={model_repository}", "--disable-auto-complete-config",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}0_",
        f"--http-address={host}", f"--grpc-address={host}", f"--metrics-address={host}",
        f"--http-port={http_port}", f"--grpc-port={grpc_port}", f"--metrics-port={metrics_port}",
        *extra_args,
    ]
    if log_file_dir is not None:
        cmd.append(f"--log-file={log_file_dir / 'triton_rank0.log'}")
    return cmd


DEFAULT_STOP_GRACE_S = 15.0


def tritonserver_arg(args: tuple[str, ...] | list[str], name: str) -> str | None:
    """The value of option ``name`` (``--name=V`` or ``--name V``) in tritonserver arguments; the last one wins."""
    value = None
    items = list(args)
    for i, arg in enumerate(items):
        if arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(items):
            value = items[i + 1]
    return value


def exit_timeout_from_args(args: tuple[str, ...] | list[str]) -> float | None:
    """The ``--exit-timeout-secs`` value in tritonserver arguments (``--exit-timeout-secs=N`` or ``... N``)."""
    value = tritonserver_arg(args, "--exit-timeout-secs")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--exit-timeout-secs must be a number of seconds, got {value!r}") from None


def default_stop_grace(extra_args: tuple[str, ...] | list[str] = ()) -> float:
    """Seconds between SIGTERM and SIGKILL: tritonserver's ``--exit-timeout-secs`` (how long it lets in-flight
    requests finish after SIGTERM; Triton's default is 30) + 5 when given, else 15."""
    exit_timeout = exit_timeout_from_args(extra_args)
    return DEFAULT_STOP_GRACE_S if exit_timeout is None else exit_timeout + 5.0


PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: the kernel SIGKILLs it when the thread that started it dies."""
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


_IN_FLIGHT = re.compile(r"Found (\d+) model versions that have in-flight inferences|has (\d+) in-flight inferences")


def in_flight_at_shutdown(log_text: str) -> list[str]:
    """Lines of a tritonserver log in which, while shutting down, it still waited for in-flight inferences."""
    out = []
    for line in log_text.splitlines():
        m = _IN_FLIGHT.search(line)
        if m and int(m.group(1) or m.group(2)) > 0:
            out.append(line.strip())
    return out


def _http_ready(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class TritonServer:
    """One running tritonserver (a process we started). Use as a context manager or call ``stop()``.

    ``start(timeout)`` returns once ``/v2/health/ready`` answers 200; on timeout or early exit the process is killed
    and :class:`TritonStartError` carries the end of its log.
    """

    def __init__(
        self,
        cmd: list[str],
        env: dict[str, str],
        *,
        http_url: str,
        grpc_url: str,
        metrics_url: str,
        shm_prefixes: tuple[str, ...],
        log_path: Path | None = None,
        echo: bool = False,
        stop_grace: float | None = None,
    ):
        self.cmd = cmd
        self.stop_grace = default_stop_grace(cmd) if stop_grace is None else float(stop_grace)
        self.env = env
        self.http_url = http_url
        self.grpc_url = grpc_url
        self.metrics_url = metrics_url
        self.shm_prefixes = shm_prefixes
        self.echo = echo
        self._own_log = log_path is None
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="koserve-triton-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None
        self._reaper_fd: int | None = None
        self._log_file = None
        self._tail_thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "TritonServer":
        if self.process is not None:
            raise KoserveError("server already started")
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115
        # PR_SET_PDEATHSIG belongs to the forking *thread*: set it only from the main thread (a server started from
        # a worker thread would die with that thread); the reaper covers every case, stubs and shm included.
        on_main = threading.current_thread() is threading.main_thread()
        self.process = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals the group (mpirun ranks, stubs)
            preexec_fn=_die_with_parent if on_main and sys.platform.startswith("linux") else None,
        )
        self._start_reaper()
        if self.echo:
            self._tail_thread = threading.Thread(target=self._tail, daemon=True)
            self._tail_thread.start()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TritonStartError(
                    f"tritonserver exited with code {self.process.returncode} before becoming ready; log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if _http_ready(self.http_url):
                return
            time.sleep(0.2)
        raise TritonStartError(
            f"tritonserver not ready after {timeout:.0f} s (killed); log {self.log_path}:\n{self.log_tail()}"
        )

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        return self.is_alive() and _http_ready(self.http_url)

    def wait(self) -> int:
        """Block until the server exits (``koserve serve``); returns its exit code."""
        assert self.process is not None
        return self.process.wait()

    def terminate(self) -> None:
        """Send SIGTERM without waiting (stop several servers in parallel, then ``stop()`` each)."""
        if self.is_alive():
            self._signal_group(signal.SIGTERM)

    def restart(self, timeout: float = 120.0, grace: float = 5.0) -> "TritonServer":
        """Stop the server (SIGKILL after ``grace`` s: a dead stub's requests never finish) and start it again with
        the same command line (same ports, same shm prefix)."""
        self.stop(grace)
        self.process = None
        return self.start(timeout)

    def _start_reaper(self) -> None:
        """Spawn :mod:`koserve.server.reaper`: it kills the group and removes the shm regions if we die."""
        read_fd, write_fd = os.pipe()
        try:
            self._reaper = subprocess.Popen(
                [sys.executable, "-S", str(Path(__file__).with_name("reaper.py")), str(read_fd),
                 str(self.process.pid), *self.shm_prefixes],
                pass_fds=(read_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )
        except OSError:
            os.close(write_fd)
            raise
        finally:
            os.close(read_fd)
        self._reaper_fd = write_fd

    def _release_reaper(self) -> None:
        """A normal stop: tell the reaper so (it exits without killing anything)."""
        fd, self._reaper_fd = self._reaper_fd, None
        if fd is not None:
            try:
                os.write(fd, b"done")
            except OSError:
                pass
            os.close(fd)
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            try:
                reaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                reaper.kill()

    def stop(self, grace: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds (default: ``self.stop_grace``, see
        :func:`default_stop_grace`) so in-flight streams can finish; remove the shm regions it leaked."""
        grace = self.stop_grace if grace is None else grace
        proc = self.process
        code = None
        if proc is not None:
            if proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self._signal_group(signal.SIGKILL)
                    proc.wait(timeout=10)
            # stubs left behind in the group (the server was killed): finish them too
            self._signal_group(signal.SIGKILL)
            code = proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        for prefix in self.shm_prefixes:
            remove_shm_regions(prefix)
        self._release_reaper()
        return code

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _tail(self) -> None:
        with open(self.log_path, "rb") as fh:
            while self.is_alive():
                line = fh.readline()
                if line:
                    sys.stderr.write(line.decode(errors="replace"))
                else:
                    time.sleep(0.1)

    def __enter__(self) -> "TritonServer":
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def cleanup_log(self) -> None:
        if self._own_log:
            self.log_path.unlink(missing_ok=True)
