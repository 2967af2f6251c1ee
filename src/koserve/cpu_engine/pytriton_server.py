"""The CPU test server: the Triton 2.51 bundled in the ``nvidia-pytriton`` wheel (test machinery, not production).

The wheel ships the python backend and the stub per Python version apart: :func:`stage_backend_dir` puts this
interpreter's stub into a backend folder of ours. The stub loads the running interpreter's libpython and finds the
venv's site-packages through ``python3`` on PATH (:func:`server_env`). Flags as measured in the reference facts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from koserve.errors import ConfigError
from koserve.server.tritonserver import TritonServer, free_ports, unique_shm_prefix


@dataclass(frozen=True)
class TritonDistribution:
    """Where the pieces of a tritonserver installation are."""

    binary: Path
    lib_dirs: tuple[Path, ...]
    python_backend: Path  # folder with libtriton_python.so
    stub: Path | None  # triton_python_backend_stub for this interpreter (None: already inside python_backend)
    cache_dir: Path | None


def find_pytriton() -> TritonDistribution:
    """Locate the tritonserver bundled in the ``nvidia-pytriton`` wheel."""
    try:
        import pytriton  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError("nvidia-pytriton is not installed: pip install 'koserve[cpu-test]'") from exc
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    binary = root / "bin" / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    for needed in (binary, libs, root / "backends" / "python" / "libtriton_python.so", stub):
        if not needed.exists():
            raise ConfigError(f"incomplete nvidia-pytriton installation: {needed} is missing")
    cache = root / "caches"
    return TritonDistribution(binary, (libs,), root / "backends" / "python", stub, cache if cache.is_dir() else None)


def stage_backend_dir(dist: TritonDistribution, dest: Path | None = None) -> Path:
    """A backend directory whose ``python/`` holds the python backend plus this interpreter's stub."""
    if dest is None:
        from koserve.fixtures import cache_dir  # noqa: PLC0415

        digest = hashlib.sha1(str(dist.python_backend).encode()).hexdigest()[:10]
        tag = f"py{sys.version_info.major}{sys.version_info.minor}-{digest}"
        dest = cache_dir() / "triton-backends" / tag
    marker = dest / "python" / "triton_python_backend_stub"
    if marker.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=dest.parent))
    try:
        shutil.copytree(dist.python_backend, tmp / "python", ignore=shutil.ignore_patterns("__pycache__"))
        if dist.stub is not None:
            shutil.copy2(dist.stub, tmp / "python" / "triton_python_backend_stub")
        try:
            tmp.rename(dest)
        except OSError:  # another process staged it first
            if not marker.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def server_env(dist: TritonDistribution, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver and its python stubs.

    The stub must load the running interpreter's libpython (pyenv's shared build) and find the venv's
    site-packages through ``python3`` on PATH.
    """
    env = dict(os.environ if base is None else base)
    libdirs = [str(p) for p in dist.lib_dirs]
    pylib = sysconfig.get_config_var("LIBDIR")
    if pylib:
        libdirs.append(pylib)
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class ServerOptions:
    """What a single (CPU) tritonserver is started with."""

    model_repository: Path
    host: str = "127.0.0.1"
    http_port: int = 0  # 0: pick a free port
    grpc_port: int = 0
    metrics_port: int = 0
    model_control_mode: str | None = None  # "explicit" with load_models
    load_models: tuple[str, ...] = ()
    log_verbose: int = 0
    extra_args: tuple[str, ...] = ()
    shm_prefix: str = field(default_factory=unique_shm_prefix)
    # python backend `thread-pool-size` (parent-side threads that hand the stubs' responses to Triton). None:
    # Triton's default. 1 was measured (docs/serving.md): no more stable, so not the default.
    python_thread_pool_size: int | None = None

    def resolve_ports(self) -> None:
        missing = [n for n in ("http_port", "grpc_port", "metrics_port") if not getattr(self, n)]
        for name, port in zip(missing, free_ports(len(missing), "127.0.0.1")):
            setattr(self, name, port)


def cpu_command(dist: TritonDistribution, backend_dir: Path, opts: ServerOptions) -> list[str]:
    """tritonserver argv for the pytriton-wheel server (flags measured in facts.md)."""
    cmd = [
        str(dist.binary),
        f"--model-repository={opts.model_repository}",
        f"--backend-directory={backend_dir}",
        f"--http-address={opts.host}",
        f"--grpc-address={opts.host}",
        f"--metrics-address={opts.host}",
        f"--http-port={opts.http_port}",
        f"--grpc-port={opts.grpc_port}",
        f"--metrics-port={opts.metrics_port}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
        f"--backend-config=python,shm-region-prefix-name={opts.shm_prefix}",
        f"--log-verbose={opts.log_verbose}",
    ]
    if opts.python_thread_pool_size and not any("thread-pool-size" in a for a in opts.extra_args):
        cmd.append(f"--backend-config=python,thread-pool-size={opts.python_thread_pool_size}")
    if dist.cache_dir is not None:
        cmd.append(f"--cache-directory={dist.cache_dir}")
    if opts.model_control_mode:
        cmd.append(f"--model-control-mode={opts.model_control_mode}")
    cmd += [f"--load-model={m}" for m in opts.load_models]
    cmd += list(opts.extra_args)
    return cmd



def cpu_triton_server(
    opts: ServerOptions, *, log_path: Path | None = None, echo: bool = False, stop_grace: float | None = None
) -> TritonServer:
    """A server for a CPU repository, using the pytriton wheel's tritonserver."""
    repo = Path(opts.model_repository)
    if not repo.is_dir():
        raise ConfigError(f"model repository {repo} does not exist")
    dist = find_pytriton()
    backend_dir = stage_backend_dir(dist)
    opts.resolve_ports()
    host = "127.0.0.1" if opts.host in ("0.0.0.0", "") else opts.host
    return TritonServer(
        cpu_command(dist, backend_dir, opts),
        server_env(dist),
        http_url=f"http://{host}:{opts.http_port}",
        grpc_url=f"{host}:{opts.grpc_port}",
        metrics_url=f"http://{host}:{opts.metrics_port}/metrics",
        shm_prefixes=(opts.shm_prefix,),
        log_path=log_path,
        echo=echo,
        stop_grace=stop_grace,
    )

