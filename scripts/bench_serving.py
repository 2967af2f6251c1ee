#!/usr/bin/env python3
"""Streaming throughput / latency of koserve's Triton models on CPU, with the replay engine at zero delay.

For 1, 16 and 64 concurrent gRPC streams it measures, through ``ensemble``, ``tensorrt_llm_bls`` and — in the same
run, as the ceiling — the engine model ``tensorrt_llm`` called directly: streamed tokens/s (all streams), TTFT and
inter-token gap (p50 / p99). Then a stability run: N back-to-back 64-stream runs through ensemble and BLS, every
stream with a timeout, checking the server is alive and every stream completed with the exact text. "Exact" means
equal to the non-streamed answer (one ``ensemble`` request with ``stream`` false), in the measured runs too.

The client (default ``--client asyncio``) runs every stream on one asyncio event loop and measures the loop's own
stalls (a 10 ms ticker): a gap the client caused is not the server's. ``--client threads`` (a thread and a
tritonclient stream per stream, as in earlier versions) adds its own GIL contention to every gap.

With ``--cpu-per-token`` it also prints each run's CPU per streamed token by process and, per path and
concurrency, the per-token stub's µs split into koserve's own share (``scripts/bench_stub_cpu.py``: the same code
outside Triton, run after the server stopped) and the python backend's, the tokens/s one stub process could carry
per core (1e6 / µs; all instances together with ``--bls-instances``), and the server's CPU against the direct
engine's. ``--concurrency 64 256`` measures 256 streams too (the repository's max batch follows).

Not a timed test: it prints figures (README and docs/benchmarks.md quote them). Client and server share the
machine's cores, so figures are relative. Usage: python scripts/bench_serving.py [--tokens 100] [--stability-runs 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np


PROMPT = "네 이름은 뭐야?"


def pct(values, q):
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def one_stream(url, model, tokens, timeout, barrier, http_url=None):
    from koserve.server.triton_calls import grpc_stream, http_generate_stream

    if http_url is not None:  # HTTP generate_stream (SSE); text models only
        barrier.wait(timeout=60)
        return http_generate_stream(http_url, model, {"text_input": PROMPT, "max_tokens": tokens, "stream": True},
                                    request_id=uuid.uuid4().hex, timeout=timeout)
    inputs, output = stream_inputs(model, tokens)
    barrier.wait(timeout=60)
    return grpc_stream(url, model, inputs, request_id=uuid.uuid4().hex, timeout=timeout, output=output)


def stream_inputs(model, tokens):
    """(inputs, output name) of one benchmark request."""
    from koserve.server.triton_calls import text_inputs

    if model == "tensorrt_llm":
        return {
            "input_ids": np.array([[128000, 9906, 1917]], dtype=np.int32),
            "input_lengths": np.array([[3]], dtype=np.int32),
            "request_output_len": np.array([[tokens]], dtype=np.int32),
            "streaming": np.array([[True]], dtype=np.bool_),
        }, "output_ids"
    return text_inputs(PROMPT, tokens), "text_output"


async def _aio_streams(url, model, streams, tokens, timeout, http_url=None):
    """All streams on one asyncio event loop — gRPC (tritonclient.grpc.aio, one channel) or, with ``http_url``, HTTP
    ``generate_stream`` (httpx, a connection per stream); also measures the loop's own lag (a 10 ms ticker), so a
    reader can tell the client's stalls from the server's."""
    import asyncio

    from koserve.server.triton_calls import StreamResult, grpc_inputs

    lags, ticking = [], True

    async def ticker():
        while ticking:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    if http_url is None:
        import tritonclient.grpc.aio as aioclient

        inputs, output = stream_inputs(model, tokens)
        client = aioclient.InferenceServerClient(url)
        close = client.close

        async def read(res, t0):
            async def requests():
                yield {"model_name": model, "inputs": grpc_inputs(inputs), "request_id": uuid.uuid4().hex,
                       "enable_empty_final_response": True}

            responses = client.stream_infer(requests())
            try:
                async for result, error in responses:
                    at = time.perf_counter()
                    if error is not None:
                        res.error = str(error)
                        break
                    if res.add_grpc(result, output, at - t0):
                        break
            finally:
                responses.cancel()  # ends the gRPC call (a no-op after the final response)
    else:
        import httpx

        client = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=streams + 1))
        close = client.aclose
        body = {"text_input": PROMPT, "max_tokens": tokens, "stream": True}

        async def read(res, t0):
            async with client.stream("POST", f"{http_url}/v2/models/{model}/generate_stream",
                                     json={**body, "id": uuid.uuid4().hex}) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    res.error = f"HTTP {resp.status_code}: {resp.text}"
                    return
                async for line in resp.aiter_lines():
                    if res.add_sse(line, time.perf_counter() - t0):
                        break

    async def one():
        res = StreamResult()
        try:
            async with asyncio.timeout(timeout):
                await read(res, time.perf_counter())
        except TimeoutError:
            res.error = f"timeout after {timeout} s"
        return res

    tick = asyncio.ensure_future(ticker())
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)
    wall = time.perf_counter() - t0
    ticking = False
    await tick
    await close()
    return results, wall, lags


def run_aio(url, model, streams, tokens, timeout, http_url=None):
    import asyncio

    results, wall, lags = asyncio.run(_aio_streams(url, model, streams, tokens, timeout, http_url))
    return summarize_run(model, streams, tokens, results, wall, 0, lags)


def run(url, model, streams, tokens, timeout, http_url=None):
    barrier = threading.Barrier(streams + 1)
    results = [None] * streams

    def worker(i):
        try:
            results[i] = one_stream(url, model, tokens, timeout, barrier, http_url)
        except Exception as exc:  # noqa: BLE001
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(streams)]
    for t in threads:
        t.start()
    barrier.wait(timeout=60)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=timeout + 30)
    wall = time.perf_counter() - t0
    hung = sum(t.is_alive() for t in threads)
    return summarize_run(model, streams, tokens, results, wall, hung)


def reference_text(ep, tokens, timeout):
    """The non-streamed answer (``ensemble``, ``stream`` false): what every streamed text must equal."""
    from koserve.server.triton_calls import grpc_stream, text_inputs

    res = grpc_stream(ep.grpc_url, "ensemble", text_inputs(PROMPT, tokens, stream=False),
                      request_id=uuid.uuid4().hex, timeout=timeout)
    if res.error is not None or not res.text:
        raise SystemExit(f"the reference (non-streamed) request failed: {res.error}")
    return res.text


def summarize_run(model, streams, tokens, results, wall, hung, lags=None):
    ok = [r for r in results if r is not None and not isinstance(r, Exception) and r.error is None]
    errors = [str(r) if isinstance(r, Exception) else (r.error if r is not None else "no result")
              for r in results if r is None or isinstance(r, Exception) or r.error is not None]
    pieces = sum(len(r.pieces) for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [b - a for r in ok for a, b in zip(r.times, r.times[1:])]
    return {
        "model": model, "streams": streams, "ok": len(ok), "errors": errors[:3], "n_errors": len(errors),
        "hung": hung, "wall_s": wall, "responses": pieces,
        "tokens_per_s": len(ok) * tokens / wall if wall > 0 else float("nan"),
        "ttft_p50_ms": pct(ttfts, 50) * 1e3, "ttft_p99_ms": pct(ttfts, 99) * 1e3,
        "gap_p50_ms": pct(gaps, 50) * 1e3, "gap_p99_ms": pct(gaps, 99) * 1e3,
        "tokens_per_response": len(ok) * tokens / pieces if pieces else float("nan"),
        "texts": {r.text for r in ok} if model != "tensorrt_llm" else set(),
        "client_lag_p99_ms": pct(lags, 99) * 1e3 if lags else float("nan"),
        "client_lag_max_ms": max(lags) * 1e3 if lags else float("nan"),
    }


def deprioritize_server(pid, nice):
    """Give the server's scheduler autogroup (its own session) this nice value; returns what the kernel reports.

    On this 2-core VM the kernel let the server's many short-lived threads starve the one client thread for up to
    770 ms at a time (``perf sched``: 221 ms from wake-up to running) — stalls the client then reported as the
    server's gaps. The client uses a tenth of the CPU, so this mostly changes who waits, not the server's speed."""
    path = Path(f"/proc/{pid}/autogroup")
    if not nice or not path.exists():
        return "unchanged"
    try:
        path.write_text(str(nice))
        return path.read_text().strip()
    except OSError as exc:
        return f"unchanged ({exc.strerror})"


def build_http_queue_probe(workdir: Path) -> Path:
    """Compile scripts/evthr_defer_probe.c (an LD_PRELOAD library for the server) with ``$CC`` or ``cc``."""
    import os
    import subprocess

    out = workdir / "evthr_defer_probe.so"
    cmd = [os.environ.get("CC", "cc"), "-shared", "-fPIC", "-O2", "-o", str(out),
           str(Path(__file__).with_name("evthr_defer_probe.c")), "-ldl"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"--probe-http-queue needs a C compiler: {' '.join(cmd)} failed: "
                         f"{getattr(exc, 'stderr', '') or exc}") from None
    return out


def http_queue_probe_report(log_text: str) -> str:
    """What the probe logged: the deepest any HTTP thread's command queue got, and the sends Triton lost."""
    import fcntl
    import re
    import socket
    import struct
    import termios

    from koserve.server.http_queue import EVHTP_COMMAND_BYTES, http_response_queue_capacity

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:  # what one queued command occupies in the send queue (SIOCOUTQ = TIOCOUTQ)
        a.send(b"\0" * EVHTP_COMMAND_BYTES)
        per_command = struct.unpack("i", fcntl.ioctl(a.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    finally:
        a.close()
        b.close()
    peaks = [int(x) for x in re.findall(r"koserve-probe: queue peak (\d+) bytes", log_text)]
    failed = len(re.findall(r"koserve-probe: send failed", log_text))
    peak = max(peaks, default=0)
    return (f"Triton HTTP thread queue (probe): peak {peak // max(per_command, 1)} of "
            f"{http_response_queue_capacity()} responses ({peak} bytes), failed sends {failed}")


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far of this process ("client"), tritonserver and each python stub (by model)."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    parent, used, names = {}, {}, {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        pid, fields = int(proc.name), stat[stat.rindex(")") + 2:].split()
        parent[pid], used[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
        model_py = next((a.decode() for a in argv if a.endswith(b"/1/model.py")), None)
        names[pid] = Path(model_py).parent.parent.name if model_py else "tritonserver"
    out = {"client": used.get(os.getpid(), 0.0), "tritonserver": used.get(server_pid, 0.0)}
    for pid, ppid in parent.items():
        if ppid == server_pid:  # the stubs are tritonserver's children
            out[names[pid]] = out.get(names[pid], 0.0) + used[pid]
    return out


def stub_processes(server_pid: int) -> dict[str, int]:
    """How many python stub processes each model of the server runs (its instances)."""
    counts: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) != server_pid:
            continue
        model_py = next((a.decode() for a in argv if a.endswith(b"/1/model.py")), None)
        if model_py:
            name = Path(model_py).parent.parent.name
            counts[name] = counts.get(name, 0) + 1
    return counts


STUB_OF_PATH = {"ensemble": "postprocessing", "tensorrt_llm_bls": "tensorrt_llm_bls"}  # the path's per-token stub
ENGINE = "tensorrt_llm"


def server_us(cpu: dict[str, float]) -> float:
    """The server's CPU per token: every process but the client (tritonserver and all stubs)."""
    return sum(v for k, v in cpu.items() if k != "client")


def capacity_rows(rows, paths, concurrency, own: dict, processes: dict[str, int]) -> list[dict]:
    """Per (path, streams) with CPU figures: the per-token stub's µs per token (medians of the runs), koserve's own
    share of it (``own[(stub, streams)]``, measured outside Triton by scripts/bench_stub_cpu.py), the rest (python
    backend: pb_utils, the stub's C++ and its round trips), the tokens/s one stub process could carry on one core
    (1e6 / µs) and all its instances together, and the server's total against the direct engine's at the same
    streams."""
    out = []
    for streams in dict.fromkeys(concurrency):
        direct = median_cpu(rows, ENGINE, streams)
        for model in paths:
            cpu = median_cpu(rows, model, streams)
            if not cpu:
                continue
            stub = STUB_OF_PATH.get(model)
            row = {"model": model, "streams": streams, "server_us": server_us(cpu),
                   "server_vs_direct": server_us(cpu) / server_us(direct) if direct and server_us(direct) else
                   float("nan"),
                   "tritonserver_us": cpu.get("tritonserver", 0.0), "engine_us": cpu.get(ENGINE, 0.0)}
            if stub is not None:
                n = max(1, processes.get(stub, 1))
                stub_us = cpu.get(stub, 0.0)
                own_us = own.get((stub, streams), float("nan"))
                per_process = 1e6 / stub_us if stub_us > 0 else float("nan")
                row.update(stub=stub, instances=n, stub_us=stub_us, own_us=own_us, backend_us=stub_us - own_us,
                           own_tokens_per_s=1e6 / own_us if own_us > 0 else float("nan"),
                           process_tokens_per_s=per_process, aggregate_tokens_per_s=per_process * n)
            out.append(row)
    return out


def format_capacity(row: dict) -> str:
    """One printed line of :func:`capacity_rows`."""
    head = (f"{row['model']} x{row['streams']}: server {row['server_us']:.0f} us/token "
            f"({row['server_vs_direct']:.2f} x direct; tritonserver {row['tritonserver_us']:.0f}, "
            f"engine stub {row['engine_us']:.0f})")
    if "stub" not in row:
        return head
    known = row["own_us"] == row["own_us"]  # not nan: measured outside Triton
    split = (f" = koserve's own {row['own_us']:.1f} + python backend {row['backend_us']:.0f}" if known else "")
    return (head + f"; {row['stub']} stub {row['stub_us']:.0f} us/token{split} -> one process "
            f"{row['process_tokens_per_s']:,.0f} tok/s per core"
            + (f" (koserve's own alone {row['own_tokens_per_s']:,.0f})" if known else "")
            + (f", {row['instances']} instances {row['aggregate_tokens_per_s']:,.0f}" if row["instances"] > 1 else ""))


def cpu_per_token(before: dict[str, float], after: dict[str, float], tokens: int) -> dict[str, float]:
    """µs of CPU per streamed token by process between two :func:`cpu_seconds` readings (processes that spent any)."""
    spent = {k: after[k] - before.get(k, 0.0) for k in sorted(after)}
    return {k: v / max(tokens, 1) * 1e6 for k, v in spent.items() if v > 0}


def format_cpu(us: dict[str, float]) -> str:
    """``client 150  postprocessing 67 ...  (all 532)``, leaving out processes under 1 µs per token."""
    shown = {k: v for k, v in us.items() if v >= 1}
    return "  ".join(f"{k} {v:.0f}" for k, v in shown.items()) + f"  (all {sum(us.values()):.0f})"


def median_cpu(rows, model, streams) -> dict[str, float]:
    """Per process, the median over the runs of ``model`` at ``streams`` of its CPU µs per token (0 where absent)."""
    runs = [r["cpu_us_per_token"] for r in rows
            if r["model"] == model and r["streams"] == streams and "cpu_us_per_token" in r]
    names = sorted({k for run in runs for k in run})
    return {k: float(np.median([run.get(k, 0.0) for run in runs])) for k in names} if runs else {}


def measure(ep, model, streams, args, http_url=None):
    """One run of ``streams`` concurrent streams with the client ``args.client`` (over HTTP with ``http_url``)."""
    if args.client == "asyncio":
        return run_aio(ep.grpc_url, model, streams, args.tokens, args.timeout, http_url)
    return run(ep.grpc_url, model, streams, args.tokens, args.timeout, http_url)


def summarize(rows, paths, concurrency):
    """One row per (path, streams): the median of each figure over the repeats (the machine's speed drifts between
    runs, so single runs mislead), and the tokens/s range."""
    table = []
    for streams in dict.fromkeys(concurrency):
        for model in paths:
            runs = [r for r in rows if r["model"] == model and r["streams"] == streams]
            if not runs:
                continue
            tps = [r["tokens_per_s"] for r in runs]
            row = {"model": model, "streams": streams, "runs": len(runs),
                   "tokens_per_s_min": min(tps), "tokens_per_s_max": max(tps)}
            for key in ("tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "gap_p50_ms", "gap_p99_ms", "tokens_per_response"):
                row[key] = float(np.median([r[key] for r in runs]))
            row["client_lag_max_ms"] = max(r["client_lag_max_ms"] for r in runs)  # nan without a ticker
            table.append(row)
    return table


def round_ratios(rows, model, streams) -> list[float]:
    """``model`` / direct engine tokens/s of each round (the paths of a round run back to back)."""
    by_round = {}
    for r in rows:
        if r["streams"] == streams:
            by_round.setdefault(r["repeat"], {})[r["model"]] = r["tokens_per_s"]
    return [paths[model] / paths["tensorrt_llm"] for _, paths in sorted(by_round.items())
            if model in paths and paths.get("tensorrt_llm")]


def own_figures(args) -> dict[tuple[str, int], float]:
    """koserve's own µs per token by (stub, streams): scripts/bench_stub_cpu.py, run after the server stopped in a
    fresh process of its own, as a stub is (in this benchmark's process, with its results and client objects alive,
    the same code measured up to 1.6x slower)."""
    import subprocess
    import tempfile

    from koserve.testing.stack import PROFILE_FAMILY

    stubs = [STUB_OF_PATH[p] for p in args.paths if p in STUB_OF_PATH]
    if not stubs:
        return {}
    with tempfile.TemporaryDirectory(prefix="koserve-stub-cpu-") as tmp:
        out = Path(tmp) / "figures.json"
        cmd = [sys.executable, str(Path(__file__).with_name("bench_stub_cpu.py")),
               "--streams", *map(str, dict.fromkeys(args.concurrency)), "--tokens", str(args.tokens),
               "--family", PROFILE_FAMILY.get(args.profile, "llama3"), "--profile", args.profile,
               "--rounds", str(args.own_rounds), "--paths", *stubs, "--json", str(out)]
        subprocess.run(cmd, check=True, timeout=1800, stdout=subprocess.DEVNULL)
        figures = json.loads(out.read_text(encoding="utf-8"))
    return {(f["path"], f["streams"]): f["us_per_token"] for f in figures}


def _repo_context(repo) -> dict:
    from koserve.repo.render import read_repo_info

    return read_repo_info(repo).get("context", {})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="akallama-70b")
    ap.add_argument("--tokens", type=int, default=400, help="tokens per stream")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64],
                    help="streams at once per measured cell (e.g. 64 256)")
    ap.add_argument("--max-batch-size", type=int, default=None,
                    help="the repository's max_batch_size (engine and postprocessing batches; default: 64 or the "
                    "largest --concurrency)")
    ap.add_argument("--bls-instances", type=int, default=1,
                    help="tensorrt_llm_bls instances (processes; each request stays in one, so order is kept)")
    ap.add_argument("--own-rounds", type=int, default=3,
                    help="with --cpu-per-token: rounds of scripts/bench_stub_cpu.py (koserve's own CPU per token in "
                    "the postprocessing and BLS stubs, outside Triton) per concurrency; 0: skip")
    ap.add_argument("--repeat", type=int, default=5,
                    help="runs per (path, streams), interleaved in rotating order; figures are medians (a single run "
                         "moves +-30 %% with the machine's speed)")
    ap.add_argument("--stability-runs", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=120.0, help="per-stream timeout (a hang fails the run)")
    ap.add_argument("--stability-models", nargs="+", default=["ensemble", "tensorrt_llm_bls"])
    ap.add_argument("--paths", nargs="+", default=["tensorrt_llm", "ensemble", "tensorrt_llm_bls"],
                    help="models measured at each concurrency")
    ap.add_argument("--protocol", choices=["grpc", "http"], default="grpc",
                    help="client protocol for ensemble/BLS (http: generate_stream; the engine is always gRPC)")
    ap.add_argument("--postprocessing-batch-delay-us", type=int, default=None,
                    help="postprocessing dynamic batching queue delay for the server (0: none; default: the render "
                    "default)")
    ap.add_argument("--stability-streams", type=int, default=64)
    ap.add_argument("--bls-stream-send-share", type=float, default=None,
                    help="BLS: share of time sending may take before streams share responses (0: never; default 0.25)")
    ap.add_argument("--bls-stream-max-interval-us", type=int, default=None,
                    help="BLS: longest wait between two responses of a stream (default 100000)")
    ap.add_argument("--bls-stream-max-wait-gaps", type=float, default=None,
                    help="BLS: the same in multiples of the engine's average gap per stream "
                    "(default: the render default; 0: off)")
    ap.add_argument("--ensemble-all-outputs", action="store_true",
                    help="render the ensemble with all of NVIDIA's optional outputs mapped (koserve repo render "
                    "--ensemble-all-outputs), to measure what they cost")
    ap.add_argument("--server-arg", action="append", default=[], help="extra tritonserver argument (repeatable)")
    ap.add_argument("--client", choices=["asyncio", "threads"], default="asyncio",
                    help="client: one asyncio event loop for all streams, or a thread per stream (gRPC and HTTP)")
    ap.add_argument("--server-autogroup-nice", type=int, default=5,
                    help="nice of the server's scheduler autogroup (Linux, sched_autogroup_enabled=1), so the kernel "
                    "does not starve the measuring client (0: leave it; 5: measured to remove stalls of 200-770 ms)")
    ap.add_argument("--probe-http-queue", action="store_true",
                    help="run the server with scripts/evthr_defer_probe.c preloaded (needs cc) and report how deep "
                    "Triton's HTTP thread queue got and how many responses it dropped (with --protocol http)")
    ap.add_argument("--cpu-per-token", action="store_true",
                    help="also print each measured run's CPU per streamed token by process (client, tritonserver, "
                    "each model's python stub; Linux /proc)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on SIGTERM too

    import os

    from koserve.testing.stack import serve_cpu


    import tempfile

    from koserve.cpu_engine.replay import long_replay_text

    # the built-in passage repeated: long enough for --tokens, so every stream runs for several seconds (short runs
    # mostly measure the machine's moment-to-moment speed)
    text_file = Path(tempfile.mkdtemp(prefix="koserve-bench-")) / "replay.txt"
    text_file.write_text(long_replay_text(args.tokens), encoding="utf-8")
    rows, stability = [], []
    if args.probe_http_queue:  # inherited by the server only: the variable is removed once it runs
        os.environ["LD_PRELOAD"] = str(build_http_queue_probe(text_file.parent))
    max_batch = args.max_batch_size or max(64, *args.concurrency)
    processes: dict[str, int] = {}
    with serve_cpu(args.profile, "replay", replay_delay_ms=0.0, max_batch_size=max_batch, replay_text_file=text_file,
                   bls_instances=args.bls_instances,
                   postprocessing_max_queue_delay_us=args.postprocessing_batch_delay_us,
                   bls_stream_send_share=args.bls_stream_send_share,
                   bls_stream_max_interval_us=args.bls_stream_max_interval_us,
                   bls_stream_max_wait_gaps=args.bls_stream_max_wait_gaps,
                   ensemble_all_outputs=args.ensemble_all_outputs or None,
                   extra_args=tuple(args.server_arg)) as ep:
        if args.probe_http_queue:
            os.environ.pop("LD_PRELOAD", None)
        autogroup = deprioritize_server(ep.server.process.pid, args.server_autogroup_nice)
        processes = stub_processes(ep.server.process.pid)
        ctx = _repo_context(ep.repo)
        print(f"server up: {ep.grpc_url} (replay, zero delay, {args.profile}, postprocessing batch delay "
              f"{ctx.get('postprocessing_max_queue_delay_us')} us, BLS stream send share "
              f"{ctx.get('bls_stream_send_share')}, max interval {ctx.get('bls_stream_max_interval_us')} us or "
              f"{ctx.get('bls_stream_max_wait_gaps')} engine gaps; ensemble outputs "
              f"{'all of NVIDIA' if ctx.get('ensemble_all_outputs') else 'koserve default'}; server autogroup "
              f"{autogroup}; client {args.client}; max batch {max_batch}; stub processes "
              f"{', '.join(f'{k} {v}' for k, v in sorted(processes.items()))})", flush=True)
        if args.protocol == "http":
            from koserve.server.http_queue import http_response_queue_capacity

            print(f"Triton HTTP frontend: {http_response_queue_capacity()} streamed responses queue per HTTP thread "
                  "before it drops one (net.core.wmem_default; docs/serving.md)", flush=True)
        run(ep.grpc_url, "ensemble", 4, 10, args.timeout)  # warm-up
        expected = reference_text(ep, args.tokens, args.timeout)
        for streams in args.concurrency:
            for rep in range(args.repeat):
                order = args.paths[rep % len(args.paths):] + args.paths[:rep % len(args.paths)]  # rotate the order
                for model in order:
                    http = ep.http_url if args.protocol == "http" and model != "tensorrt_llm" else None
                    before = cpu_seconds(ep.server.process.pid) if args.cpu_per_token else None
                    row = measure(ep, model, streams, args, http)
                    if before is not None:
                        row["cpu_us_per_token"] = cpu_per_token(before, cpu_seconds(ep.server.process.pid),
                                                                row["ok"] * args.tokens)
                    row["repeat"] = rep
                    row["exact"] = model == "tensorrt_llm" or row["texts"] == {expected}
                    rows.append(row)
                    print(f"{model:17s} x{streams:3d}: {row['tokens_per_s']:7.0f} tok/s  TTFT p50 "
                          f"{row['ttft_p50_ms']:7.1f} p99 {row['ttft_p99_ms']:7.1f} ms  gap p50 {row['gap_p50_ms']:6.2f} "
                          f"p99 {row['gap_p99_ms']:7.2f} ms  {row['tokens_per_response']:.2f} tok/response  "
                          f"ok {row['ok']}/{streams} hung {row['hung']} exact {row['exact']}  client lag p99 {row['client_lag_p99_ms']:.1f} "
                          f"max {row['client_lag_max_ms']:.1f} ms", flush=True)
                    if before is not None:
                        print(f"{'':17s}      CPU us per token: {format_cpu(row['cpu_us_per_token'])}", flush=True)
        for i in range(args.stability_runs):
            for model in args.stability_models:
                http = ep.http_url if args.protocol == "http" else None
                row = measure(ep, model, args.stability_streams, args, http)
                # a Triton that aborted can hang in its own signal handler: alive as a process, not answering
                alive = ep.server.is_ready() and "Signal (" not in ep.server.log_tail(200)
                exact = row["texts"] == {expected}
                stability.append({"run": i, "model": model, "ok": row["ok"], "hung": row["hung"], "alive": alive,
                                  "exact": exact, "tokens_per_s": row["tokens_per_s"], "errors": row["errors"]})
                print(f"stability {i + 1:2d}/{args.stability_runs} {model:17s}: ok {row['ok']}/{args.stability_streams} hung {row['hung']} "
                      f"alive {alive} exact {exact} {row['tokens_per_s']:.0f} tok/s"
                      + (f"  first error: {row['errors'][0][:200]}" if row["errors"] else ""), flush=True)
                if not alive:
                    print("SERVER DIED:\n" + ep.server.log_tail(30))
                    break
            if not alive:
                break
        if args.probe_http_queue:
            print(http_queue_probe_report(Path(ep.log_path).read_text(errors="replace")), flush=True)

    table = summarize(rows, args.paths, args.concurrency)
    print(f"\n| path | streams | tokens/s (median of {args.repeat}; min–max) | TTFT p50 / p99 (ms) | gap p50 / p99 (ms) "
          "| tokens / response | client stall max (ms) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['model']} | {r['streams']} | {r['tokens_per_s']:.0f} ({r['tokens_per_s_min']:.0f}–"
              f"{r['tokens_per_s_max']:.0f}) | {r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f} | "
              f"{r['gap_p50_ms']:.2f} / {r['gap_p99_ms']:.2f} | {r['tokens_per_response']:.2f} | "
              f"{'—' if np.isnan(r['client_lag_max_ms']) else format(r['client_lag_max_ms'], '.0f')} |")
    by = {(r["model"], r["streams"]): r for r in table}
    top = max(args.concurrency)
    direct = by.get(("tensorrt_llm", top))
    if direct:
        for model in ("ensemble", "tensorrt_llm_bls"):
            if (model, top) not in by:
                continue
            r = by[(model, top)]
            print(f"{model} at {top} streams: {r['tokens_per_s'] / direct['tokens_per_s']:.2f} x direct tokens/s "
                  f"(target >= 0.9), p99 gap {r['gap_p99_ms'] / max(direct['gap_p99_ms'], 1e-9):.2f} x direct "
                  f"(target <= 1.5)  [medians of {args.repeat} interleaved runs]")
            print(f"    per round: {', '.join(f'{x:.2f}' for x in round_ratios(rows, model, top))}")
        mid = direct["tokens_per_s"]
        print(f"noise: the direct engine against itself at {top} streams moved {direct['tokens_per_s_min'] / mid:.2f}-"
              f"{direct['tokens_per_s_max'] / mid:.2f} x its median between rounds (same server, same work)")
    if args.cpu_per_token:
        for model in args.paths:
            cpu = median_cpu(rows, model, top)
            if cpu:
                print(f"CPU us per token, {model} at {top} streams (medians of the runs): {format_cpu(cpu)}")
        own = own_figures(args) if args.own_rounds > 0 else {}
        print("CPU per token by path (medians of the runs; koserve's own: scripts/bench_stub_cpu.py, the same code "
              "outside Triton with a null pb_utils, median of its rounds; targets: koserve's own <= 20 us in "
              "postprocessing, <= 30 us in the BLS; server <= 1.3 x direct):")
        capacity = capacity_rows(rows, args.paths, args.concurrency, own, processes)
        for row in capacity:
            print("  " + format_capacity(row))
    else:
        capacity = []
    good = all(s["ok"] == args.stability_streams and s["hung"] == 0 and s["alive"] and s["exact"] for s in stability)
    print(f"stability: {len(stability)} runs of {args.stability_streams} {args.protocol} streams, all complete, exact and server alive: {good}")
    inexact = [f"{r['model']} x{r['streams']} (repeat {r['repeat']})" for r in rows if not r["exact"] or r["ok"] < r["streams"]]
    print("measured runs: every stream complete and equal to the non-streamed text"
          + (": True" if not inexact else f": False — {', '.join(inexact)}"))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rows": [{k: v for k, v in r.items() if k != "texts"} for r in rows], "table": table,
                       "capacity": capacity, "stability": stability}, fh, indent=2)
    return 0 if good and not inexact else 1


if __name__ == "__main__":
    sys.exit(main())
