"""`koserve serve --repo DIR`: run tritonserver on a rendered repository (CPU wheel, or mpirun TP×PP on a GPU box)."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path


def _is_gpu_repo(repo: Path, info: dict) -> bool:
    if info.get("kind"):
        return info["kind"] == "gpu"
    cfg = repo / "tensorrt_llm" / "config.pbtxt"
    return cfg.is_file() and 'backend: "tensorrtllm"' in cfg.read_text(encoding="utf-8")


# Triton logs these on a machine without a GPU (nvidia-pytriton's 2.51 build looks for CUDA, NVML and pinned memory);
# on the CPU path they are expected.
CPU_NOISE_NOTE = ("koserve: CPU mode: tritonserver's lines about CUDA drivers, NVML/DCGM and pinned memory (some "
                  "start with E) are expected without a GPU and harmless; real errors stop the start")


def uses_gpu(args) -> bool:
    """The GPU (mpirun) path: --gpu/--cpu, else what the rendered repository says."""
    from koserve.repo.render import read_repo_info

    if args.gpu is not None:
        return args.gpu
    repo = Path(args.repo).expanduser().resolve()
    return _is_gpu_repo(repo, read_repo_info(repo)) if repo.is_dir() else False


def build_server(args):
    """The TritonServer for ``args`` (not started)."""
    from koserve.errors import ConfigError
    from koserve.repo.render import read_repo_info
    from koserve.server.tritonserver import GPU_TRITONSERVER, TritonServer, gpu_command, unique_shm_prefix
    from koserve.cpu_engine.pytriton_server import ServerOptions, cpu_triton_server

    from koserve.server.tritonserver import default_stop_grace

    repo = Path(args.repo).expanduser().resolve()
    if not repo.is_dir():
        raise ConfigError(f"--repo {repo} does not exist (render one with `koserve repo render`)")
    extra = server_extra_args(args)
    grace = args.stop_grace if args.stop_grace is not None else default_stop_grace(extra)
    if grace < 0:
        raise ConfigError(f"--stop-grace must be >= 0 seconds, got {grace}")
    info = read_repo_info(repo)
    if not uses_gpu(args):
        return cpu_triton_server(
            ServerOptions(
                repo, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                metrics_port=args.metrics_port, log_verbose=args.log_verbose, extra_args=extra,
            ),
            echo=not args.quiet,
            stop_grace=grace,
        )
    world = args.world_size or int(info.get("world_size") or 1)
    prefix = unique_shm_prefix("r")
    http, grpc, metrics = args.http_port or 8000, args.grpc_port or 8001, args.metrics_port or 8002
    if info.get("engine_backend") == "pytorch":  # the LLM API starts its own ranks: one tritonserver
        from koserve.server.tritonserver import llmapi_command

        cmd = llmapi_command(
            repo, world, nodes=args.nodes, http_port=http, grpc_port=grpc, metrics_port=metrics, host=args.host,
            tritonserver=args.tritonserver or GPU_TRITONSERVER, shm_prefix=prefix, extra_args=extra,
        )
        world = 1
    else:
        if args.nodes != 1:
            raise ConfigError("--nodes is for repositories rendered --engine-backend pytorch; the engine path's "
                              "mpirun places its TP×PP ranks by the hostfile")
        cmd = gpu_command(
            repo, world, http_port=http, grpc_port=grpc, metrics_port=metrics, host=args.host,
            tritonserver=args.tritonserver or GPU_TRITONSERVER, shm_prefix=prefix, extra_args=extra,
        )
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    return TritonServer(
        cmd, dict(os.environ), http_url=f"http://{host}:{http}", grpc_url=f"{host}:{grpc}",
        metrics_url=f"http://{host}:{metrics}/metrics",
        shm_prefixes=tuple(f"{prefix}{r}_" for r in range(world)), echo=not args.quiet, stop_grace=grace,
    )


def server_extra_args(args) -> tuple[str, ...]:
    """The tritonserver arguments given after ``--``."""
    return tuple(a for a in args.extra if a != "--") if args.extra else ()


def _check_health_args(args) -> None:
    from koserve.errors import ConfigError

    if not 0 <= args.health_port <= 65535:
        raise ConfigError(f"--health-port must be a TCP port in [0, 65535] (0 = off), got {args.health_port}")
    if args.drain_grace is not None and args.drain_grace < 0:
        raise ConfigError(f"--drain-grace must be >= 0 seconds, got {args.drain_grace}")
    if not args.worst_inter_token > 0:
        raise ConfigError(f"--worst-inter-token must be > 0 seconds, got {args.worst_inter_token}")
    for name in ("probe_interval", "probe_timeout", "restart_window"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0 seconds, got {getattr(args, name)}")
    if args.restart_grace < 0:
        raise ConfigError(f"--restart-grace must be >= 0 seconds, got {args.restart_grace}")
    if not 0 <= args.max_restarts <= 1000:
        raise ConfigError(f"--max-restarts must be in [0, 1000], got {args.max_restarts}")


def _probe_url(server, extra: tuple[str, ...]) -> str:
    """gRPC unless tritonserver's gRPC endpoint is off (then HTTP)."""
    from koserve.server.tritonserver import tritonserver_arg

    grpc_off = (tritonserver_arg(extra, "--allow-grpc") or "true").lower() in ("false", "0", "no", "off")
    return server.http_url if grpc_off else server.grpc_url


def _drain_file() -> Path:
    """A path for the drain file that does not exist yet (``koserve.triton_models.drain``)."""
    import tempfile  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    return Path(tempfile.gettempdir()) / f"koserve-drain-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _drain_and_stop(server, state, args, drain_file: Path) -> None:
    """SIGTERM: unready, refuse new requests, wait for the engine to finish what runs (koserve.server.drain)."""
    from koserve.server.drain import repo_drain_grace, wait_engine_idle

    repo = Path(args.repo).expanduser().resolve()
    grace = args.drain_grace if args.drain_grace is not None else repo_drain_grace(repo, args.worst_inter_token)
    state.set_phase("draining", "SIGTERM received: finishing the requests in flight, refusing new ones")
    drain_file.touch()
    print(f"koserve: draining: refusing new requests, waiting up to {grace:.0f} s for those in flight",
          file=sys.stderr, flush=True)
    result = wait_engine_idle(server.metrics_url, grace, alive=server.is_alive)
    print(f"koserve: drained in {result.seconds:.1f} s ({result.why}); stopping Triton", file=sys.stderr, flush=True)


def _serve(args) -> int:
    import threading

    from koserve.errors import ConfigError
    from koserve.server.health import HealthState, Prober, serve_health, text_models_in
    from koserve.server.http_queue import http_stream_warning
    from koserve.server.supervisor import RestartPolicy, Supervisor
    from koserve.triton_models.drain import DRAIN_FILE_ENV

    server = build_server(args)
    if args.print_command:
        print(shlex.join(server.cmd))
        return 0
    if not args.skip_version_check and args.gpu is not False:
        from koserve.engines.preflight import preflight_repo  # GPU repository: TensorRT-LLM versions must agree

        preflight_repo(Path(args.repo).expanduser().resolve())
    _check_health_args(args)
    drain_file = _drain_file()
    server.env[DRAIN_FILE_ENV] = str(drain_file)  # the stubs refuse new requests once it exists
    stop = threading.Event()
    state = HealthState(models=text_models_in(Path(args.repo).expanduser().resolve()),
                        probe_interval=args.probe_interval, probe_timeout=args.probe_timeout)

    def _terminate(signum, frame):
        if state.phase == "starting":  # nothing in flight yet: stop at once
            raise KeyboardInterrupt
        stop.set()  # the supervisor returns; then drain

    signal.signal(signal.SIGTERM, _terminate)
    health = prober = None
    if args.health_port:
        try:
            health = serve_health(state, args.host, args.health_port)
        except OSError as exc:
            raise ConfigError(f"cannot serve health on {args.host}:{args.health_port}: {exc} "
                              "(choose another --health-port, or 0 for none)") from None
    if not args.quiet and not uses_gpu(args):
        print(CPU_NOISE_NOTE, file=sys.stderr, flush=True)
    try:
        server.start(args.ready_timeout)
        health_line = f"\n  health  http://{args.host}:{args.health_port}/health/ready" if health else ""
        print(
            f"koserve: Triton is ready\n  gRPC    {server.grpc_url}\n  HTTP    {server.http_url}\n"
            f"  metrics {server.metrics_url}{health_line}\n  log     {server.log_path}",
            file=sys.stderr, flush=True,
        )
        warning = http_stream_warning(server_extra_args(args))
        if warning:
            print(f"koserve: {warning}", file=sys.stderr, flush=True)
        if health is not None and state.models:
            prober = Prober(state, _probe_url(server, server_extra_args(args)), state.models,
                            interval=args.probe_interval, timeout=args.probe_timeout).start()
        policy = RestartPolicy(args.max_restarts, args.restart_window, args.restart_grace)
        code = Supervisor(server, state, policy=policy, ready_timeout=args.ready_timeout, prober=prober,
                          stop=stop).run()
        if stop.is_set():
            _drain_and_stop(server, state, args, drain_file)
            state.set_phase("stopping")
        return code
    except KeyboardInterrupt:
        state.set_phase("stopping")
        print("koserve: stopping Triton", file=sys.stderr)
        return 0
    finally:
        if prober is not None:
            prober.stop()
        server.stop()
        drain_file.unlink(missing_ok=True)
        if health is not None:
            health.shutdown()
            health.server_close()


def register(subparsers) -> None:
    from koserve.cli.conventions import add_time, seconds_text

    # dependency-free modules: `koserve --help` stays fast
    from koserve.server.health import DEFAULT_HEALTH_PORT, DEFAULT_PROBE_INTERVAL_S, DEFAULT_PROBE_TIMEOUT_S
    from koserve.server.supervisor import (
        DEFAULT_MAX_RESTARTS,
        DEFAULT_RESTART_GRACE_S,
        DEFAULT_RESTART_WINDOW_S,
        EXIT_GAVE_UP,
    )

    p = subparsers.add_parser(
        "serve",
        help="run tritonserver on a rendered model repository",
        description="CPU repositories run the tritonserver bundled in nvidia-pytriton; GPU repositories run "
        "`mpirun -n TP*PP` tritonserver ranks (TensorRT-LLM's launch pattern). Waits on the server; "
        "arguments after `--` go to tritonserver (on GPU to rank 0 only: ranks > 0 serve no endpoints and load "
        "only tensorrt_llm, so frontend/model flags there would conflict).",
    )
    p.add_argument("--repo", required=True, metavar="DIR", help="rendered repository (koserve repo render)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback only)")
    p.add_argument("--http-port", type=int, default=0, help="default: 8000 on GPU, a free port on CPU")
    p.add_argument("--grpc-port", type=int, default=0, help="default: 8001 on GPU, a free port on CPU")
    p.add_argument("--metrics-port", type=int, default=0, help="default: 8002 on GPU, a free port on CPU")
    add_time(p, "--ready-timeout", default="10m", help="time to wait for readiness, then kill the server")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="force the GPU (mpirun) path")
    g.add_argument("--cpu", dest="gpu", action="store_false", default=None,
                   help="force the CPU (pytriton wheel) path")
    p.add_argument("--world-size", type=int, metavar="N", help="GPU: ranks (default: TP*PP from the rendered repository)")
    p.add_argument("--nodes", type=int, default=1, metavar="N",
                   help="GPU, --engine-backend pytorch repositories: nodes the TP×PP ranks span (default 1: one "
                   "tritonserver whose LLM spawns its ranks; more: `mpirun -n TP*PP trtllm-llmapi-launch "
                   "tritonserver`, hosts from Open MPI's hostfile)")
    p.add_argument("--tritonserver", metavar="PATH",
                   help="GPU: tritonserver binary (default: /opt/tritonserver/bin/tritonserver)")
    add_time(p, "--stop-grace", default=None,
             help="on SIGTERM/Ctrl-C: time between SIGTERM to tritonserver and SIGKILL, so in-flight streams can "
             "finish (default: --exit-timeout-secs given after `--` + 5 s, else 15s)")
    d = p.add_argument_group("drain on SIGTERM (docs/reliability.md, \"Drain\")")
    add_time(d, "--drain-grace", default=None,
             help="on SIGTERM: /health/ready turns 503 and new requests are refused (UNAVAILABLE, \"server is "
             "draining\"); requests in flight get up to this long to finish before tritonserver is stopped "
             "(default: 10s + the profile's max_new_tokens x --worst-inter-token)")
    add_time(d, "--worst-inter-token", default="100ms",
             help="the slowest time between two tokens of a stream that the default --drain-grace allows for "
             "(default: 100ms)")
    h = p.add_argument_group("health and restarts (docs/reliability.md)")
    h.add_argument("--health-port", type=int, default=DEFAULT_HEALTH_PORT, metavar="PORT",
                   help=f"serve GET /health/ready and /health/live on --host:PORT (default: {DEFAULT_HEALTH_PORT}; "
                   "0 = off)")
    add_time(h, "--probe-interval", default=seconds_text(DEFAULT_PROBE_INTERVAL_S),
             help="time between one-token probe requests through ensemble and tensorrt_llm_bls")
    add_time(h, "--probe-timeout", default=seconds_text(DEFAULT_PROBE_TIMEOUT_S), help="time a probe may take")
    h.add_argument("--max-restarts", type=int, default=DEFAULT_MAX_RESTARTS, metavar="N",
                   help="restart tritonserver when a python stub dies or it exits, at most N times within "
                   f"--restart-window, then exit {EXIT_GAVE_UP} (default: {DEFAULT_MAX_RESTARTS}; 0 = exit at once)")
    add_time(h, "--restart-window", default=seconds_text(DEFAULT_RESTART_WINDOW_S), help="window of --max-restarts")
    add_time(h, "--restart-grace", default=seconds_text(DEFAULT_RESTART_GRACE_S),
             help="on a restart: time between SIGTERM and SIGKILL (requests waiting on a dead stub never finish)")
    p.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL",
                   help="tritonserver --log-verbose level (0 = off; 1 and up log more)")
    p.add_argument("--quiet", action="store_true", help="do not echo the server log")
    p.add_argument("--print-command", action="store_true", help="print the command line and exit")
    p.add_argument("--skip-version-check", action="store_true",
                   help="GPU: do not compare tensorrt_llm.__version__, the engine's config.json version and the "
                        "recipe's trtllm_version before starting (koserve build preflight)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then extra tritonserver arguments")
    p.set_defaults(func=_serve)
