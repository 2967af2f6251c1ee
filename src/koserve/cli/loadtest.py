"""`koserve loadtest`: run locust headless against one server and write a report folder."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from koserve.cli.conventions import add_alias, add_max_tokens, add_profile, add_target, add_time
from koserve.loadtest.durations import duration_arg

DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "http://127.0.0.1:8000", "openai": "http://127.0.0.1:8080"}
# The most frequent errors printed on the console (summary.md lists ten).
CONSOLE_ERRORS = 3


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="load-test a Triton server or the OpenAI gateway with locust; write a report",
        description=(
            "Run locust headless (as a subprocess) with a load shape, printing live progress, then write a report "
            "folder: summary.md / summary.json (p50/p90/p99 of TTFT, TPOT = (E2E - TTFT) / (output tokens - 1) "
            "per request, chunk gap, E2E; output tokens/s; requests/s; error rate; prompt tokens the model "
            "received; why the run ended), PNG plots, locust's raw CSVs, per-request records and Triton's "
            "Prometheus metrics before and after. Exit code 1 when no request succeeded or an --slo is missed. "
            "Guide: docs/loadtest.md."
        ),
        epilog="example: koserve loadtest --url 127.0.0.1:8001 -p komt-13b --duration 30s --concurrency 4",
    )
    p.add_argument("legacy_url", nargs="?", metavar="URL",
                   help="deprecated: the server as a positional argument (give --url; removed in koserve 0.3)")
    p.add_argument("--url", metavar="URL",
                   help="server: gRPC host:port (grpc), or http://host:port (http, openai); env KOSERVE_URL "
                   "(default: 127.0.0.1:8001, http://127.0.0.1:8000, http://127.0.0.1:8080 by --protocol)")
    p.add_argument("--protocol", choices=("grpc", "http", "openai"), default="grpc",
                   help="gRPC stream_infer, HTTP generate_stream (SSE) or the OpenAI-compatible gateway")
    add_target(p)
    add_profile(p, help_suffix=" (chat template, stop words, tokenizer)")
    p.add_argument("--openai-model", default="", metavar="NAME",
                   help="--protocol openai: the model name sent to the gateway (default: the profile name)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/loadtest-<time>)")
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", default="all",
                   help="short, medium, long, all, a .jsonl file/folder, or synthetic")
    g.add_argument("--isl", type=int, default=128, help="synthetic input length (tokens of the user message)")
    g.add_argument("--isl-stddev", type=float, default=0.0, help="synthetic input length stddev (0 = fixed)")
    add_max_tokens(g, default=128, help="output length: max_tokens per request (mean)")
    add_alias(g, "--osl", "--max-tokens", dest="max_tokens", type=int, metavar="N")
    g.add_argument("--max-tokens-stddev", type=float, default=0.0, metavar="N",
                   help="standard deviation of max_tokens per request (0 = fixed)")
    add_alias(g, "--osl-stddev", "--max-tokens-stddev", dest="max_tokens_stddev", type=float, metavar="N")
    g.add_argument("--ignore-eos", action="store_true", help="ask for exactly --max-tokens tokens (min_tokens)")
    g.add_argument("--seed", type=int, default=0, help="seed of the prompt order, synthetic text and lengths")
    g.add_argument("--tokenizer", default="auto",
                   help="tokenizer to count tokens: checkpoint folder/tokenizer.json, auto, or none")
    s = p.add_argument_group("load shape (durations: 90s, 2m, 1h, 1h30m, 500ms or plain seconds)")
    s.add_argument("--shape", choices=("fixed", "step", "poisson"), default="fixed",
                   help="fixed concurrency, a step ramp of users, or Poisson arrivals")
    add_time(s, "--duration", default="60s", help="measured load time, after any --warmup")
    s.add_argument("--warmup", type=duration_arg, default=0.0, metavar="TIME",
                   help="load before the measured time; its requests are recorded but left out of every figure "
                        "(default: none)")
    s.add_argument("--warmup-requests", type=int, default=0, metavar="N",
                   help="the first N requests are warm-up, left out of every figure (default: none)")
    s.add_argument("--concurrency", type=int, default=1,
                   help="fixed: concurrent streams; step: first step; poisson: most requests in flight")
    s.add_argument("--ramp-rate", type=float, default=0.0, help="users started per second (0 = at once)")
    s.add_argument("--step-users", type=int, default=1, help="step: users added per step")
    add_time(s, "--step-duration", default="10s", help="step: time per step")
    s.add_argument("--max-users", type=int, default=0, help="step: ceiling; poisson: in-flight cap (0 = derived)")
    s.add_argument("--rate", dest="request_rate", type=float, default=1.0, help="poisson: requests per second")
    b = p.add_argument_group("bounds and output")
    b.add_argument("--max-requests", type=int, default=100_000,
                   help="stop after this many measured requests (warm-up not counted)")
    add_time(b, "--request-timeout", default="60s", help="time before a request counts as failed")
    b.add_argument("--metrics-url", default="auto",
                   help="Prometheus endpoint scraped before/after (auto: <host>:8002/metrics, or the gateway's "
                        "/metrics; none: skip)")
    b.add_argument("--processes", type=int, default=1,
                   help="locust worker processes on this machine (locust --processes; distributed mode)")
    b.add_argument("--slo", default="",
                   help="e.g. ttft_p99=2s,tpot_p99=50ms,error_rate=1%%: exit 1 when missed (default: none)")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    b.add_argument("--no-progress", action="store_true", help="print no live progress while the test runs")
    b.add_argument("--echo", action="store_true",
                   help="show locust's own output (its periodic stats) instead of writing locust.log; "
                        "progress still prints, as plain lines")
    p.set_defaults(func=run)


def server_url(args: argparse.Namespace) -> str:
    """--url, else the deprecated positional URL (with a warning), else $KOSERVE_URL, else the protocol's default."""
    import os  # noqa: PLC0415

    if args.legacy_url:
        print("koserve: warning: the server as a positional argument is deprecated and goes in koserve 0.3; "
              f"use --url {args.legacy_url}", file=sys.stderr)
        if args.url and args.url != args.legacy_url:
            from koserve.errors import ConfigError  # noqa: PLC0415

            raise ConfigError(f"two servers given: --url {args.url} and {args.legacy_url}; give only --url")
    return args.url or args.legacy_url or os.environ.get("KOSERVE_URL") or DEFAULT_URLS[args.protocol]


def run(args: argparse.Namespace) -> int:
    from koserve.loadtest.report import parse_slos
    from koserve.loadtest.runner import LoadTestConfig, run_loadtest

    slos = parse_slos(args.slo) if args.slo else []
    out = args.out or Path("reports") / time.strftime("loadtest-%Y%m%d-%H%M%S")
    cfg = LoadTestConfig(
        url=server_url(args),
        out_dir=out,
        protocol=args.protocol,
        target_model=args.target,
        profile=args.profile,
        openai_model=args.openai_model,
        prompts=args.prompts,
        isl=args.isl,
        isl_stddev=args.isl_stddev,
        osl=args.max_tokens,
        osl_stddev=args.max_tokens_stddev,
        ignore_eos=args.ignore_eos,
        seed=args.seed,
        tokenizer=args.tokenizer,
        shape=args.shape,
        duration=args.duration,
        warmup=args.warmup,
        warmup_requests=args.warmup_requests,
        concurrency=args.concurrency,
        ramp_rate=args.ramp_rate,
        step_users=args.step_users,
        step_duration=args.step_duration,
        max_users=args.max_users,
        request_rate=args.request_rate,
        max_requests=args.max_requests,
        request_timeout=args.request_timeout,
        metrics_url=None if args.metrics_url == "none" else args.metrics_url,
        processes=args.processes,
        plots=not args.no_plots,
        slos=slos,
    )
    result = run_loadtest(cfg, echo=args.echo, progress=not args.no_progress)
    print_summary(result.summary, out)
    if not result.summary["succeeded"]:
        print(f"koserve: error: no request succeeded ({result.summary['failed']} failed); the errors are above and "
              f"in {out}/summary.md", file=sys.stderr)
        return 1
    return 0 if result.slos_passed else 1


def print_summary(s: dict, out: Path) -> None:
    run = s.get("run", {})
    print(f"report: {out}/summary.md")
    if run.get("end_detail"):
        print(f"run ended: {run['end_detail']}")
    warm = f", {s['warmup_requests']} warm-up not counted" if s.get("warmup_requests") else ""
    print(
        f"requests {s['succeeded']} ok / {s['failed']} failed ({s['error_rate'] * 100:.1f} %){warm}, "
        f"{s['requests_per_s']:.2f} req/s, {s['output_tokens_per_s']:.1f} output tokens/s"
    )
    for key, label in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("chunk_gap_ms", "chunk gap"), ("e2e_ms", "E2E")):
        st = s[key]
        vals = " ".join(f"{k}={st[k]:.1f}" if st[k] is not None else f"{k}=–" for k in ("p50", "p90", "p99"))
        print(f"{label:>9} ms: {vals}")
    print("      TPOT = (E2E - TTFT) / (output tokens - 1) per request (AIPerf's inter-token latency); "
          "chunk gap = time between streamed chunks")
    pt = s.get("prompt_tokens_per_request", {})
    if pt.get("mean") is not None:
        print(f"prompt tokens the model received per request: mean {pt['mean']:.1f}, max {pt['max']:.0f} "
              f"({s.get('prompt_tokens_source')})")
    if s.get("failed") and s.get("errors"):
        print(f"most frequent errors ({s['failed']} failed requests):")
        for e in s["errors"][:CONSOLE_ERRORS]:
            print(f"  {e['count']} × {e['message']}")
    for err in dict.fromkeys(run.get("metrics_scrape_errors", [])):
        print(f"no server metrics in the report: {err}")
    if s.get("plots_note") and s["plots_note"] != "--no-plots":
        print(f"no plots: {s['plots_note']}")
    from koserve.loadtest.report import slo_comparison  # noqa: PLC0415

    for r in s.get("slos", []):
        print(f"SLO {r['slo']}: {slo_comparison(r)} {'pass' if r['passed'] else 'MISSED'}")
