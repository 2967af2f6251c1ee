"""`koserve loadtest`: run locust headless against one server and write a report folder."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from koserve.loadtest.durations import duration_arg


class _DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already names its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or "%(default)" in text or not action.option_strings
                or default is None or default is False or default == "" or default == argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "loadtest",
        help="load-test a Triton server or the OpenAI gateway with locust; write a report",
        description=(
            "Run locust headless (as a subprocess) with a load shape, printing live progress, then write a report "
            "folder: summary.md / summary.json (p50/p90/p99 of TTFT, TPOT = (E2E - TTFT) / (output tokens - 1) "
            "per request, chunk gap, E2E; output tokens/s; requests/s; error rate; prompt tokens the model "
            "received; why the run ended), PNG plots, locust's raw CSVs, per-request records and Triton's "
            "Prometheus metrics before and after. Exit code 1 when an --slo is missed. Guide: docs/loadtest.md."
        ),
        formatter_class=_DefaultsFormatter,
    )
    p.add_argument("url", help="target: gRPC host:port (grpc), or http://host:port (http, openai)")
    p.add_argument("--protocol", choices=("grpc", "http", "openai"), default="grpc",
                   help="gRPC stream_infer, HTTP generate_stream (SSE) or the OpenAI-compatible gateway")
    p.add_argument("--model", dest="target_model", default="ensemble",
                   help="Triton model: ensemble or tensorrt_llm_bls")
    p.add_argument("--profile", default="akallama-70b", help="model profile (chat template, stop words, tokenizer)")
    p.add_argument("--openai-model", default="", help="model name for the gateway (default: the profile name)")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: reports/loadtest-<time>)")
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", default="all",
                   help="short, medium, long, all, a .jsonl file/folder, or synthetic")
    g.add_argument("--isl", type=int, default=128, help="synthetic input length (tokens of the user message)")
    g.add_argument("--isl-stddev", type=float, default=0.0, help="synthetic input length stddev (0 = fixed)")
    g.add_argument("--osl", type=int, default=128, help="output length = max_tokens per request")
    g.add_argument("--osl-stddev", type=float, default=0.0, help="output length stddev (0 = fixed)")
    g.add_argument("--ignore-eos", action="store_true", help="ask for exactly max_tokens (min_length)")
    g.add_argument("--seed", type=int, default=0, help="seed of the prompt order, synthetic text and lengths")
    g.add_argument("--tokenizer", default="auto",
                   help="tokenizer to count tokens: checkpoint folder/tokenizer.json, auto, or none")
    s = p.add_argument_group("load shape (durations: 90s, 2m, 1h, 1h30m or plain seconds)")
    s.add_argument("--shape", choices=("fixed", "step", "poisson"), default="fixed",
                   help="fixed concurrency, a step ramp of users, or Poisson arrivals")
    s.add_argument("--duration", type=duration_arg, default=60.0, metavar="TIME",
                   help="measured load time, after any --warmup (default: 60s)")
    s.add_argument("--warmup", type=duration_arg, default=0.0, metavar="TIME",
                   help="load before the measured time; its requests are recorded but left out of every figure "
                        "(default: none)")
    s.add_argument("--warmup-requests", type=int, default=0, metavar="N",
                   help="the first N requests are warm-up, left out of every figure (default: none)")
    s.add_argument("--concurrency", type=int, default=1,
                   help="fixed: concurrent streams; step: first step; poisson: most requests in flight")
    s.add_argument("--ramp-rate", type=float, default=0.0, help="users started per second (0 = at once)")
    s.add_argument("--step-users", type=int, default=1, help="step: users added per step")
    s.add_argument("--step-duration", type=duration_arg, default=10.0, metavar="TIME",
                   help="step: time per step (default: 10s)")
    s.add_argument("--max-users", type=int, default=0, help="step: ceiling; poisson: in-flight cap (0 = derived)")
    s.add_argument("--rate", dest="request_rate", type=float, default=1.0, help="poisson: requests per second")
    b = p.add_argument_group("bounds and output")
    b.add_argument("--max-requests", type=int, default=100_000,
                   help="stop after this many measured requests (warm-up not counted)")
    b.add_argument("--request-timeout", type=duration_arg, default=60.0, metavar="TIME",
                   help="time before a request counts as failed (default: 60s)")
    b.add_argument("--metrics-url", default="auto",
                   help="Prometheus endpoint scraped before/after (auto: <host>:8002/metrics, or the gateway's "
                        "/metrics; none: skip)")
    b.add_argument("--processes", type=int, default=1,
                   help="locust worker processes on this machine (locust --processes; distributed mode)")
    b.add_argument("--slo", default="",
                   help="e.g. ttft_p99=2s,tpot_p99=50ms,error_rate=1%%: exit 1 when missed (none by default)")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    b.add_argument("--no-progress", action="store_true", help="print no live progress while the test runs")
    b.add_argument("--echo", action="store_true",
                   help="show locust's own output (its periodic stats) instead of writing locust.log; "
                        "progress still prints, as plain lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from koserve.loadtest.report import parse_slos
    from koserve.loadtest.runner import LoadTestConfig, run_loadtest

    slos = parse_slos(args.slo) if args.slo else []
    out = args.out or Path("reports") / time.strftime("loadtest-%Y%m%d-%H%M%S")
    cfg = LoadTestConfig(
        url=args.url,
        out_dir=out,
        protocol=args.protocol,
        target_model=args.target_model,
        profile=args.profile,
        openai_model=args.openai_model,
        prompts=args.prompts,
        isl=args.isl,
        isl_stddev=args.isl_stddev,
        osl=args.osl,
        osl_stddev=args.osl_stddev,
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
    for r in s.get("slos", []):
        value = "–" if r["value"] is None else f"{r['value']:.3f}"
        print(f"SLO {r['slo']}: {value} {'pass' if r['passed'] else 'MISSED'}")
