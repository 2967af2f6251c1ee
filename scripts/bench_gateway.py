#!/usr/bin/env python3
"""The OpenAI gateway at 64 streams against the replay engine (zero delay), every target in one run.

One real tritonserver (CPU stand-in engine replaying a long Korean text) and the real ``koserve gateway`` CLI in front
of it, serving the same model three ways: ``target=engine`` (ids straight to ``tensorrt_llm``), ``ensemble`` and
``tensorrt_llm_bls``. For ``--workers 1`` and ``2`` it runs, in rotating order and ``--repeat`` times, 64 OpenAI
chat streams (``stream: true``, usage included; an asyncio httpx client reading the SSE) through each target, and
the engine called directly over gRPC (no gateway) in the same loop. Per run it reads /proc: CPU seconds of
tritonserver + its python stubs ("server"), of every gateway process, and of this client.

Printed against the goals of issue 29 (medians of the runs):
- server CPU per token on the direct path / the direct engine's (goal <= 1.1);
- the gateway's own CPU per token, per process (goal <= 67 us, the postprocessing stub's at 64 streams);
- capacity in tokens/s per gateway core with 2 workers / 1 worker: 2 x (tokens per gateway CPU-second, 2 workers) /
  (the same, 1 worker) (goal >= 1.8);
- tokens/s through the gateway on the direct path / on the ensemble, same run (goal >= 1.2).
Every stream's text must equal the others' (all targets, all runs). Not a timed test: it prints figures (README and
docs/benchmarks.md quote them). Client, gateway and server share the machine's cores: figures are relative.

Usage: python scripts/bench_gateway.py [--streams 64] [--tokens 200] [--repeat 3] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving  # noqa: E402  (the direct-engine run and /proc CPU readers)

TARGETS = ("engine", "ensemble", "tensorrt_llm_bls")
PROMPT = "네 이름은 뭐야?"
GOALS = {"server_vs_direct": 1.1, "gateway_us": 67.0, "workers_capacity": 1.8, "direct_vs_ensemble": 1.2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each pid still alive."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def children(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    parent = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            parent[int(proc.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


class Gateway:
    """``koserve gateway --workers N`` in a subprocess, stopped with SIGTERM."""

    def __init__(self, grpc_url: str, tokenizer: str, workers: int, log: Path):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        specs = [f"m-{t}={grpc_url},profile=akallama-70b,target={t},tokenizer={tokenizer}" for t in TARGETS]
        cmd = [str(Path(sys.executable).with_name("koserve")), "gateway", "--port", str(self.port), "--workers",
               str(workers), "--log-level", "warning", "--drain-grace", "2s"]
        for s in specs:
            cmd += ["--model", s]
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        import httpx

        for _ in range(600):
            if self.proc.poll() is not None:
                raise SystemExit(f"the gateway exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise SystemExit("the gateway did not become healthy in 60 s")
        self.workers = workers

    def pids(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _openai_streams(base: str, model: str, streams: int, tokens: int, timeout: float):
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    limits = httpx.Limits(max_connections=streams + 1, max_keepalive_connections=0)  # a connection per stream

    async def one(client):
        text, usage, t0, ttft, error = [], None, time.perf_counter(), None, None
        try:
            async with asyncio.timeout(timeout):
                async with client.stream("POST", base + "/v1/chat/completions", json=body) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        return {"error": f"HTTP {resp.status_code}: {resp.text[:200]}"}
                    async for line in resp.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        event = json.loads(line[6:])
                        if "error" in event:
                            error = event["error"]["message"]
                            break
                        if event.get("usage"):
                            usage = event["usage"]
                        for choice in event.get("choices") or ():
                            content = choice["delta"].get("content")
                            if content:
                                ttft = ttft or time.perf_counter() - t0
                                text.append(content)
        except TimeoutError:
            error = f"timeout after {timeout} s"
        return {"error": error, "text": "".join(text), "tokens": (usage or {}).get("completion_tokens", 0),
                "ttft": ttft}

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(client) for _ in range(streams)))
        wall = time.perf_counter() - t0
    return results, wall


def gateway_run(gw: Gateway, ep, target: str, args) -> dict:
    pids = gw.pids()
    server = ep.server.process.pid
    b_server, b_gw = bench_serving.server_us(bench_serving.cpu_seconds(server)), process_cpu(pids)
    results, wall = asyncio.run(_openai_streams(gw.base, f"m-{target}", args.streams, args.tokens, args.timeout))
    a_server, a_gw = bench_serving.server_us(bench_serving.cpu_seconds(server)), process_cpu(pids)
    ok = [r for r in results if not r.get("error")]
    tokens = sum(r["tokens"] for r in ok)
    per_process = {pid: (a_gw[pid] - b_gw.get(pid, 0.0)) * 1e6 / max(tokens, 1) for pid in a_gw}
    return {"target": target, "workers": gw.workers, "ok": len(ok), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "server_us": (a_server - b_server) * 1e6 / max(tokens, 1),
            "gateway_us": sum(per_process.values()), "gateway_us_per_process": per_process,
            "ttft_p50_ms": float(np.median([r["ttft"] for r in ok if r["ttft"]] or [np.nan])) * 1e3,
            "texts": sorted({r["text"] for r in ok}), "errors": [r["error"] for r in results if r.get("error")][:3]}


def direct_run(ep, args) -> dict:
    server = ep.server.process.pid
    before = bench_serving.server_us(bench_serving.cpu_seconds(server))
    row = bench_serving.run_aio(ep.grpc_url, "tensorrt_llm", args.streams, args.tokens, args.timeout)
    after = bench_serving.server_us(bench_serving.cpu_seconds(server))
    tokens = row["ok"] * args.tokens
    return {"target": "direct engine (no gateway)", "ok": row["ok"], "tokens": tokens, "wall_s": row["wall_s"],
            "tokens_per_s": row["tokens_per_s"], "server_us": (after - before) * 1e6 / max(tokens, 1)}


def aiperf_reads_metrics(aiperf: str, ep, work: Path, workers: int) -> list[str]:
    """Run AIPerf (its own venv) against the gateway (direct path, ``workers`` processes) with its server-metrics
    collection on (the default: base URL + /metrics) and return the ``vllm:`` metrics it exported."""
    import bench_locust  # noqa: PLC0415  (the offline hub cache AIPerf resolves tokenizers through)

    hub = work / "hub"
    tokenizer = bench_locust._hf_cache(hub, Path(ep.tokenizer_dir), "llama3-tokenizer")
    gw = Gateway(ep.grpc_url, str(ep.tokenizer_dir), workers, work / "gateway-aiperf.log")
    out = work / "aiperf"
    try:
        cmd = [aiperf, "profile", "--model", "m-engine", "--url", gw.base, "--endpoint-type", "chat", "--streaming",
               "--tokenizer", tokenizer, "--synthetic-input-tokens-mean", "64", "--synthetic-input-tokens-stddev",
               "0", "--output-tokens-mean", "100", "--output-tokens-stddev", "0", "--concurrency", "8",
               "--request-count", "48", "--warmup-request-count", "4", "--random-seed", "0", "--ui", "none",
               "--no-gpu-telemetry", "--server-metrics-formats", "json", "--output-artifact-dir", str(out)]
        env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        print("$ " + " ".join(cmd), flush=True)
        with open(work / "aiperf.log", "wb") as log:
            done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=900, check=False)
        if done.returncode != 0:
            raise SystemExit(f"aiperf exited with {done.returncode}; see {work / 'aiperf.log'}")
    finally:
        gw.stop()
    export = out / "server_metrics_export.json"
    if not export.exists():
        raise SystemExit(f"AIPerf wrote no server-metrics export ({export})")
    metrics = json.loads(export.read_text()).get("metrics", {})
    names = sorted(n for n in metrics if n.startswith("vllm:"))
    print(f"AIPerf {export.name}: {len(names)} vllm: metrics read from the gateway's /metrics ({workers} workers):",
          flush=True)
    for name in names:
        for series in metrics[name].get("series", []):
            stats = series.get("stats", {})
            shown = {k: round(v, 4) for k, v in stats.items() if k in ("count", "total", "avg", "max", "p50_estimate")}
            print(f"  {name} {series.get('labels', {})}: {shown}", flush=True)
    return names


def med(rows, key):
    values = [r[key] for r in rows]
    return float(np.median(values)) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per worker count (targets rotate each round)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--timeout", type=float, default=180.0, help="per-stream timeout")
    ap.add_argument("--server-autogroup-nice", type=int, default=5)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--aiperf", metavar="AIPERF", help="also run AIPerf (its executable, e.g. /tmp/aiperf-venv/bin/"
                    "aiperf) against the gateway and list the vllm: metrics its server-metrics collection exported")
    ap.add_argument("--aiperf-only", action="store_true", help="with --aiperf: skip the benchmark")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from koserve.cpu_engine.replay import long_replay_text
    from koserve.testing.stack import serve_cpu

    work = Path(tempfile.mkdtemp(prefix="koserve-bench-gateway-"))
    text_file = work / "replay.txt"
    text_file.write_text(long_replay_text(args.tokens), encoding="utf-8")
    rows, direct = [], []
    with serve_cpu("akallama-70b", "replay", replay_delay_ms=0.0, max_batch_size=max(64, args.streams),
                   replay_text_file=text_file, workdir=work / "server") as ep:
        bench_serving.deprioritize_server(ep.server.process.pid, args.server_autogroup_nice)
        print(f"server up: {ep.grpc_url} (replay, zero delay); {args.streams} streams x {args.tokens} tokens",
              flush=True)
        if args.aiperf:
            aiperf_reads_metrics(args.aiperf, ep, work, max(args.workers))
            if args.aiperf_only:
                return 0
        for workers in args.workers:
            gw = Gateway(ep.grpc_url, str(ep.tokenizer_dir), workers, work / f"gateway-{workers}.log")
            try:
                asyncio.run(_openai_streams(gw.base, "m-engine", 4, 10, args.timeout))  # warm-up
                asyncio.run(_openai_streams(gw.base, "m-ensemble", 4, 10, args.timeout))
                for rep in range(args.repeat):
                    order = [*TARGETS, "direct"]
                    order = order[rep % len(order):] + order[:rep % len(order)]
                    for target in order:
                        if target == "direct":
                            row = direct_run(ep, args)
                            direct.append(row)
                            print(f"direct engine      x{args.streams}: {row['tokens_per_s']:7.0f} tok/s  server "
                                  f"{row['server_us']:6.1f} us/token", flush=True)
                            continue
                        row = gateway_run(gw, ep, target, args)
                        row["round"] = rep
                        rows.append(row)
                        procs = ", ".join(f"{v:.1f}" for v in row["gateway_us_per_process"].values())
                        print(f"gateway x{workers} {target:16s}: {row['tokens_per_s']:7.0f} tok/s  ok {row['ok']}/"
                              f"{args.streams}  server {row['server_us']:6.1f} us/token  gateway "
                              f"{row['gateway_us']:6.1f} us/token (per process: {procs})  TTFT p50 "
                              f"{row['ttft_p50_ms']:.0f} ms" + (f"  errors {row['errors']}" if row["errors"] else ""),
                              flush=True)
            finally:
                gw.stop()
    texts = {t for r in rows for t in r["texts"]}
    complete = all(r["ok"] == args.streams for r in rows)
    d_us, d_tps = med(direct, "server_us"), med(direct, "tokens_per_s")
    print(f"\n| path | gateway workers | tokens/s | server CPU us/token (x direct engine) | gateway CPU us/token "
          f"(all processes) | tokens per gateway CPU-second |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| direct engine, no gateway | — | {d_tps:.0f} | {d_us:.1f} (1.00) | — | — |")
    if d_us <= 0:  # a run too short for the CPU clock's 10 ms ticks: no ratio to print
        print("the direct engine's CPU per token rounded to 0 (run too short): ratios to it are shown as nan")
        d_us = float("nan")
    table = {}
    for workers in args.workers:
        for target in TARGETS:
            sel = [r for r in rows if r["workers"] == workers and r["target"] == target]
            if not sel:
                continue
            t = {"tokens_per_s": med(sel, "tokens_per_s"), "server_us": med(sel, "server_us"),
                 "gateway_us": med(sel, "gateway_us")}
            t["per_core"] = 1e6 / t["gateway_us"] if t["gateway_us"] > 0 else float("nan")
            table[(workers, target)] = t
            print(f"| gateway → {target} | {workers} | {t['tokens_per_s']:.0f} | {t['server_us']:.1f} "
                  f"({t['server_us'] / d_us:.2f}) | {t['gateway_us']:.1f} | {t['per_core']:.0f} |")
    print(f"\nmedians of {args.repeat} rounds per worker count; direct engine: {len(direct)} runs in the same loop")
    one, two = table.get((1, "engine")), table.get((2, "engine"))
    if one:
        r = one["server_us"] / d_us
        print(f"goal: server CPU per token on the direct path <= {GOALS['server_vs_direct']} x the direct engine's: "
              f"{r:.2f} x {'MET' if r <= GOALS['server_vs_direct'] else 'MISSED'}")
        procs = [r["gateway_us_per_process"] for r in rows if r["workers"] == 1 and r["target"] == "engine"]
        print(f"goal: gateway CPU per token <= {GOALS['gateway_us']:.0f} us: {one['gateway_us']:.1f} us "
              f"(1 worker) {'MET' if one['gateway_us'] <= GOALS['gateway_us'] else 'MISSED'}")
        if two:
            per = [r["gateway_us_per_process"] for r in rows if r["workers"] == 2 and r["target"] == "engine"]
            shown = "; ".join(", ".join(f"{v:.1f}" for v in p.values()) for p in per)
            print(f"      2 workers, per process (supervisor first) per run: {shown}")
        ens = table.get((1, "ensemble"))
        if ens:
            r = one["tokens_per_s"] / ens["tokens_per_s"]
            print(f"goal: tokens/s through the gateway direct / on the ensemble >= {GOALS['direct_vs_ensemble']}: "
                  f"{r:.2f} {'MET' if r >= GOALS['direct_vs_ensemble'] else 'MISSED'}")
    if one and two:
        r = 2 * two["per_core"] / one["per_core"]
        print(f"goal: capacity with 2 workers / 1 worker (2 x tokens per gateway CPU-second) >= "
              f"{GOALS['workers_capacity']}: {r:.2f} {'MET' if r >= GOALS['workers_capacity'] else 'MISSED'} "
              f"(measured tokens/s {two['tokens_per_s']:.0f} vs {one['tokens_per_s']:.0f}: the 2 cores are shared "
              f"with the server and the client)")
    print(f"every stream complete: {complete}; one text across all targets and runs: {len(texts) == 1}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "direct": direct}, indent=2, default=str))
    return 0 if complete and len(texts) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
