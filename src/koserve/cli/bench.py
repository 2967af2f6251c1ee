"""`koserve bench ...`: micro-benchmarks that print Markdown tables (README quotes them)."""

from __future__ import annotations

import argparse


def _add_text_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", action="append", choices=["llama3", "llama2"],
                        help="tokenizer fixture to measure (repeatable; default both)")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[128, 1024, 8192],
                        help="comma-separated output lengths in tokens (default 128,1024,8192)")
    parser.add_argument("--repeats", type=int, default=7, help="runs per cell; the median is reported (default 7)")


def _run_text(args) -> int:
    from koserve.text import bench

    print(bench.main(tuple(args.family or ("llama3", "llama2")), args.lengths, args.repeats))
    return 0


def text_main(argv: list[str] | None = None) -> int:
    """Entry point of scripts/bench_text.py (same options as `koserve bench text`)."""
    from koserve.errors import KoserveError

    parser = argparse.ArgumentParser(prog="bench_text.py", description="detokenizer / stop matcher µs per token")
    _add_text_arguments(parser)
    try:
        return _run_text(parser.parse_args(argv))
    except KoserveError as exc:
        parser.exit(2, f"bench_text.py: error: {exc}\n")


def register(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="micro-benchmarks (print Markdown tables)")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    text = sub.add_parser("text", help="incremental detokenizer and stop-string matcher µs per token (Korean)")
    _add_text_arguments(text)
    text.set_defaults(func=_run_text)
