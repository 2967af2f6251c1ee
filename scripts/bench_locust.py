#!/usr/bin/env python3
"""How much streaming load one locust worker process can generate before its own CPU is the limit.

Starts a CPU tritonserver with the replay engine at zero delay (tokens as fast as the server can send them), runs
`koserve loadtest` (one locust process) at several concurrencies and output lengths per protocol, and reads the
locust process's own CPU time during the test. A least-squares fit of

    locust CPU seconds = a * requests + b * output tokens

splits the generator's cost into a per-request part (opening the stream, prompt, token recount, report events) and
a per-token part (one streamed response: decode, timing, one ``itl`` locust event). From it:

- tokens/s one process sustains at 85 % of a core (long answers): 0.85 / b;
- concurrent streams it sustains for a given per-stream decode speed and answer length:
  0.85 / (a * speed / length + b * speed).

The server shares this machine's cores, so the achieved rates below are the server's limit, not locust's; the fit
uses locust's CPU only. Usage:

    .venv/bin/python scripts/bench_locust.py [--protocols grpc,http] [--concurrency 1,4,16] [--osl 32,256]
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
    args = ap.parse_args(argv)

    from koserve.loadtest.runner import LoadTestConfig, run_loadtest
    from koserve.serving.engine.replay import BUILTIN_REPLAY_TEXT
    from koserve.serving.stack import serve_cpu

    protocols = args.protocols.split(",")
    levels = [int(x) for x in args.concurrency.split(",")]
    osls = [int(x) for x in args.osl.split(",")]
    work = Path(tempfile.mkdtemp(prefix="koserve-bench-locust-"))
    text = work / "replay.txt"
    text.write_text(" ".join([BUILTIN_REPLAY_TEXT] * (max(osls) // 100 + 2)), encoding="utf-8")
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


if __name__ == "__main__":
    sys.exit(main())
