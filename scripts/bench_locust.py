#!/usr/bin/env python3
"""How much streaming load one locust worker process can generate before its own CPU is the limit.

Starts a CPU tritonserver with the replay engine at zero delay (tokens as fast as the server can send them), runs
`koserve loadtest` (one locust process) at several concurrencies and output lengths per protocol, and reads the
locust process's own CPU time during the test. A least-squares fit of

    locust CPU seconds = a * requests + b * output tokens

splits the generator's cost into a per-request part (opening the stream, prompt, token recount, report events) and
a per-token part (one streamed response: decode, timing, one ``chunk_gap`` locust event). From it:

- tokens/s one process sustains at 85 % of a core (long answers): 0.85 / b;
- concurrent streams it sustains for a given per-stream decode speed and answer length:
  0.85 / (a * speed / length + b * speed).

The server shares this machine's cores, so the achieved rates below are the server's limit, not locust's; the fit
uses locust's CPU only. Usage:

    .venv/bin/python scripts/bench_locust.py [--protocols grpc,http] [--concurrency 1,4,16] [--osl 32,256]

With ``--vs-aiperf AIPERF`` (the ``aiperf`` executable of a venv of its own) it instead runs `koserve loadtest` and
AIPerf back to back against the OpenAI gateway in front of a replay engine at ``--pace-ms`` per token (same
concurrency, ISL/OSL, request count and warm-up) and prints their TTFT, TPOT (AIPerf: inter-token latency), chunk
gap (AIPerf: inter-chunk latency), throughput and prompt tokens side by side (docs/loadtest.md):

    .venv/bin/python scripts/bench_locust.py --vs-aiperf /tmp/aiperf-venv/bin/aiperf --concurrency 1,8 \
        --requests 40 --osl 64
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HEADROOM = 0.85


def fit(rows: list[dict]) -> tuple[float, float]:
    """Least squares for cpu = a*requests + b*tokens (no intercept)."""
    srr = sum(r["requests"] ** 2 for r in rows)
    stt = sum(r["tokens"] ** 2 for r in rows)
    srt = sum(r["requests"] * r["tokens"] for r in rows)
    src = sum(r["requests"] * r["cpu_s"] for r in rows)
    stc = sum(r["tokens"] * r["cpu_s"] for r in rows)
    det = srr * stt - srt * srt
    if abs(det) < 1e-12:
        raise SystemExit("cannot separate per-request and per-token cost: use two different --osl values")
    a = (src * stt - stc * srt) / det
    b = (srr * stc - srt * src) / det
    return a, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default="grpc,http")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--osl", default="32,256")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--profile", default="akallama-70b")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    ap.add_argument("--vs-aiperf", metavar="AIPERF", help="compare with AIPerf (its executable) instead")
    ap.add_argument("--requests", type=int, default=40, help="--vs-aiperf: measured requests per tool and level")
    ap.add_argument("--warmup-requests", type=int, default=4, help="--vs-aiperf: warm-up requests per run")
    ap.add_argument("--isl", type=int, default=128, help="--vs-aiperf: synthetic input tokens")
    ap.add_argument("--pace-ms", type=float, default=20.0, help="--vs-aiperf: replay engine ms per token")
    ap.add_argument("--rounds", type=int, default=1, help="--vs-aiperf: runs per tool and level (alternating)")
    args = ap.parse_args(argv)
    if args.vs_aiperf:
        return compare_with_aiperf(args)

    from koserve.loadtest.runner import LoadTestConfig, run_loadtest
    from koserve.cpu_engine.replay import long_replay_text
    from koserve.testing.stack import serve_cpu

    protocols = args.protocols.split(",")
    levels = [int(x) for x in args.concurrency.split(",")]
    osls = [int(x) for x in args.osl.split(",")]
    work = Path(tempfile.mkdtemp(prefix="koserve-bench-locust-"))
    text = work / "replay.txt"
    text.write_text(long_replay_text(max(osls)), encoding="utf-8")
    rows: list[dict] = []
    with serve_cpu(args.profile, "replay", replay_text_file=text, replay_delay_ms=0.0, max_batch_size=64,
                   max_input_len=1024, max_seq_len=max(osls) + 1100, workdir=work / "triton") as ep:
        for protocol in protocols:
            url = ep.grpc_url if protocol == "grpc" else ep.http_url
            for osl in osls:
                for conc in levels:
                    out = work / f"{protocol}-{osl}-{conc}"
                    cfg = LoadTestConfig(url=url, out_dir=out, protocol=protocol, profile=args.profile,
                                         prompts="short", osl=osl, concurrency=conc, duration=args.duration,
                                         request_timeout=20, metrics_url=None, plots=False)
                    if not (ep.server.is_alive() and ep.server.is_ready()):
                        print(f"tritonserver died or hangs; stopping (log: {ep.log_path}):\n{ep.server.log_tail(8)}",
                              file=sys.stderr)
                        break
                    t0 = time.monotonic()
                    result = run_loadtest(cfg)
                    s = result.summary
                    procs = [json.loads(p.read_text()) for p in (out / "records").glob("process-*.json")]
                    if not procs or s["succeeded"] == 0:
                        print(f"{protocol} osl={osl} c={conc}: no measurement ({s['failed']} failed)", file=sys.stderr)
                        continue
                    row = {
                        "protocol": protocol, "osl": osl, "concurrency": conc,
                        "requests": s["succeeded"] + s["failed"], "tokens": s["chunks_total"],
                        "tokens_per_s": s["output_tokens_per_s"], "requests_per_s": s["requests_per_s"],
                        "itl_p50_ms": s["itl_ms"]["p50"], "cpu_s": procs[0]["cpu_s"],
                        "cpu_percent": procs[0]["cpu_percent"], "wall_s": round(time.monotonic() - t0, 1),
                    }
                    if s["failed"]:
                        row["excluded"] = f"{s['failed']} failed: {s['errors'][0]['message']}"
                        print(f"  (excluded from the fit: {row['excluded']}; server log {ep.log_path})",
                              file=sys.stderr)
                    rows.append(row)
                    print(f"{protocol:5} osl={osl:4} c={conc:3}: {row['tokens_per_s']:8.1f} tok/s "
                          f"{row['requests_per_s']:6.2f} req/s  locust CPU {row['cpu_percent']:5.1f} %  "
                          f"{1e6 * row['cpu_s'] / max(row['tokens'], 1):6.1f} µs CPU/token", flush=True)

    print("\n| protocol | osl | streams | tokens/s | req/s | locust CPU | µs CPU per token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['protocol']} | {r['osl']} | {r['concurrency']} | {r['tokens_per_s']:.0f} | "
              f"{r['requests_per_s']:.1f} | {r['cpu_percent']:.0f} % | {1e6 * r['cpu_s'] / max(r['tokens'], 1):.0f} |"
              + (f" excluded: {r['excluded']}" if "excluded" in r else ""))
    print("\n| protocol | CPU per request | CPU per token | tokens/s at 85 % of a core | streams at 40 tok/s, "
          "256-token answers | streams at 20 tok/s, 512-token answers |")
    print("|---|---:|---:|---:|---:|---:|")
    fits = {}
    for protocol in protocols:
        mine = [r for r in rows if r["protocol"] == protocol and "excluded" not in r]
        if len({r["osl"] for r in mine}) < 2:
            continue
        a, b = fit(mine)
        fits[protocol] = {"cpu_per_request_ms": a * 1e3, "cpu_per_token_us": b * 1e6}

        def streams(speed: float, length: int) -> float:
            return HEADROOM / (a * speed / length + b * speed)

        print(f"| {protocol} | {a * 1e3:.2f} ms | {b * 1e6:.0f} µs | {HEADROOM / b:,.0f} | {streams(40, 256):.0f} | "
              f"{streams(20, 512):.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "fits": fits}, indent=2) + "\n")
    return 0


# -- side by side with AIPerf ------------------------------------------------------------------------------------

AGREE = 0.15  # TTFT and TPOT p50 within 15 %


def _hf_cache(root: Path, tokenizer_dir: Path, name: str) -> str:
    """A Hugging Face hub cache holding ``tokenizer_dir`` as the repo ``koserve/<name>`` (symlinks): AIPerf 0.13
    in offline mode resolves ``--tokenizer`` through the hub cache only (a plain folder fails in offline mode)."""
    rev = "0" * 40
    repo = root / f"models--koserve--{name}"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(rev)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if (tokenizer_dir / f).is_file() and not (snap / f).exists():
            (snap / f).symlink_to(tokenizer_dir / f)
    return f"koserve/{name}"


def _start_gateway(grpc_url: str, profile: str, log: Path):
    import subprocess
    import urllib.request

    from koserve.server.tritonserver import free_port

    port = free_port()
    fh = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "koserve", "gateway", "--model", f"{profile}={grpc_url}",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, fh, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=10)
    fh.close()
    raise SystemExit(f"gateway not healthy within 60 s: {log}")


def _aiperf_run(aiperf: str, url: str, model: str, tokenizer: str, hub: Path, out: Path, *, conc: int,
                requests: int, warmup: int, isl: int, osl: int) -> dict:
    import os
    import subprocess

    cmd = [aiperf, "profile", "--model", model, "--url", url, "--endpoint-type", "chat", "--streaming",
           "--tokenizer", tokenizer, "--synthetic-input-tokens-mean", str(isl), "--synthetic-input-tokens-stddev",
           "0", "--output-tokens-mean", str(osl), "--output-tokens-stddev", "0", "--concurrency", str(conc),
           "--request-count", str(requests), "--warmup-request-count", str(warmup), "--random-seed", "0",
           "--ui", "none", "--no-server-metrics", "--no-gpu-telemetry", "--output-artifact-dir", str(out)]
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    print("$ HF_HUB_CACHE=... HF_HUB_OFFLINE=1 " + " ".join(cmd), flush=True)
    with open(out.with_suffix(".log"), "wb") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"aiperf exited with {done.returncode}; see {out.with_suffix('.log')}")
    return json.loads((out / "profile_export_aiperf.json").read_text())


MEASURES = (  # (label, koserve summary key, stat, AIPerf metric, stat)
    ("requests (measured)", "succeeded", None, "request_count", "avg"),
    ("TTFT p50 (ms)", "ttft_ms", "p50", "time_to_first_token", "p50"),
    ("TTFT p99 (ms)", "ttft_ms", "p99", "time_to_first_token", "p99"),
    ("TPOT p50 (ms) / AIPerf inter-token latency", "tpot_ms", "p50", "inter_token_latency", "p50"),
    ("TPOT p99 (ms) / AIPerf inter-token latency", "tpot_ms", "p99", "inter_token_latency", "p99"),
    ("chunk gap p50 (ms) / AIPerf inter-chunk latency", "chunk_gap_ms", "p50", "inter_chunk_latency", "p50"),
    ("chunk gap p99 (ms) / AIPerf inter-chunk latency", "chunk_gap_ms", "p99", "inter_chunk_latency", "p99"),
    ("E2E p50 (ms) / AIPerf request latency", "e2e_ms", "p50", "request_latency", "p50"),
    ("output tokens/s", "output_tokens_per_s", None, "output_token_throughput", "avg"),
    ("output tokens per request", "output_tokens_per_request", "mean", "output_sequence_length", "avg"),
    ("prompt tokens the model received (AIPerf: usage.prompt_tokens)", "prompt_tokens_per_request", "mean",
     "usage_prompt_tokens", "avg"),
    ("tokens of the synthetic user text (AIPerf ISL)", "input_tokens_per_request", "mean",
     "input_sequence_length", "avg"),
)


def compare_with_aiperf(args) -> int:
    import statistics

    from koserve.loadtest.runner import LoadTestConfig, run_loadtest
    from koserve.profiles import load_profile
    from koserve.cpu_engine.replay import long_replay_text
    from koserve.testing.stack import serve_cpu

    osl = int(args.osl.split(",")[0])
    levels = [int(x) for x in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="koserve-vs-aiperf-"))
    text = work / "replay.txt"
    text.write_text(long_replay_text(osl), encoding="utf-8")
    family = load_profile(args.profile).tokenizer_family
    values: dict[tuple[int, str, str], list[float]] = {}  # (level, label, tool) -> one value per round
    with serve_cpu(args.profile, "replay", replay_text_file=text, replay_delay_ms=args.pace_ms, max_batch_size=16,
                   max_input_len=1536, max_seq_len=2048, workdir=work / "triton") as ep:
        tokenizer = _hf_cache(work / "hub", Path(ep.tokenizer_dir), f"{family}-tokenizer")
        gw, gw_log, url = _start_gateway(ep.grpc_url, args.profile, work / "gateway.log")
        try:
            for conc in levels:
                for rnd in range(args.rounds):
                    order = ("koserve", "aiperf") if rnd % 2 == 0 else ("aiperf", "koserve")
                    for tool in order:  # back to back, alternating which goes first
                        if tool == "koserve":
                            cfg = LoadTestConfig(url=url, out_dir=work / f"koserve-c{conc}-r{rnd}",
                                                 protocol="openai", profile=args.profile, prompts="synthetic",
                                                 isl=args.isl, osl=osl, concurrency=conc, duration=600,
                                                 max_requests=args.requests, warmup_requests=args.warmup_requests,
                                                 request_timeout=30, metrics_url=None, plots=False)
                            print(f"$ koserve loadtest --url {url} --protocol openai --profile {args.profile} --prompts "
                                  f"synthetic --isl {args.isl} --max-tokens {osl} --concurrency {conc} --max-requests "
                                  f"{args.requests} --warmup-requests {args.warmup_requests} --duration 10m",
                                  flush=True)
                            k = run_loadtest(cfg, progress=False).summary
                            for label, key, stat, _, _ in MEASURES:
                                v = k[key] if stat is None else k[key][stat]
                                values.setdefault((conc, label, tool), []).append(v)
                        else:
                            a = _aiperf_run(args.vs_aiperf, url, args.profile, tokenizer, work / "hub",
                                            work / f"aiperf-c{conc}-r{rnd}", conc=conc, requests=args.requests,
                                            warmup=args.warmup_requests, isl=args.isl, osl=osl)
                            for label, _, _, metric, stat in MEASURES:
                                values.setdefault((conc, label, tool), []).append((a.get(metric) or {}).get(stat))
        finally:
            gw.terminate()
            try:
                gw.wait(timeout=15)
            except Exception:  # noqa: BLE001
                gw.kill()
            gw_log.close()

    def median(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    def spread(xs):
        xs = [x for x in xs if x is not None]
        return "" if len(xs) < 2 else f" ({_num(min(xs))}–{_num(max(xs))})"

    rounds = f"median of {args.rounds} rounds (range)" if args.rounds > 1 else "one round"
    print(f"\n| concurrency | measure | koserve loadtest, {rounds} | AIPerf {_aiperf_version(args.vs_aiperf)} | "
          "difference of the medians |")
    print("|---:|---|---:|---:|---:|")
    verdict = True
    for conc in levels:
        for label, *_ in MEASURES:
            mine, theirs = values[(conc, label, "koserve")], values[(conc, label, "aiperf")]
            m, t = median(mine), median(theirs)
            diff = None if m is None or not t else (m - t) / t
            if diff is not None and label.split(" ")[:2] in (["TTFT", "p50"], ["TPOT", "p50"]) and abs(diff) > AGREE:
                verdict = False
            print(f"| {conc} | {label} | {_num(m)}{spread(mine)} | {_num(t)}{spread(theirs)} | "
                  f"{'–' if diff is None else f'{diff * 100:+.1f} %'} |")
    print(f"\nTTFT and TPOT p50 within {AGREE:.0%}: {'yes' if verdict else 'NO'} (work folder {work})")
    return 0 if verdict else 1


def _num(value) -> str:
    if value is None:
        return "–"
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


def _aiperf_version(aiperf: str) -> str:
    import subprocess

    pip = Path(aiperf).with_name("pip")
    try:
        out = subprocess.run([str(pip), "show", "aiperf"], capture_output=True, text=True, timeout=60).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Version:")), "")
    except (OSError, subprocess.TimeoutExpired):
        return ""


if __name__ == "__main__":
    sys.exit(main())
