"""`koserve eval`: the Korean quality gate between a BF16 deployment and a quantized one (see koserve.eval)."""

from __future__ import annotations

import json
from pathlib import Path


def _run(args) -> int:
    from koserve.errors import ConfigError
    from koserve.eval.metrics import GateThresholds, format_report
    from koserve.eval.run import EvalOptions, run_eval

    for name in ("min_exact_match", "max_ref_chrf_drop"):
        value = getattr(args, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1, got {value}")
    if args.max_logprob_drop < 0:
        raise ConfigError(f"--max-logprob-drop must be >= 0 nats, got {args.max_logprob_drop}")
    if not 1 <= args.max_tokens <= 4096:
        raise ConfigError(f"--max-tokens must be between 1 and 4096, got {args.max_tokens}")
    opts = EvalOptions(
        baseline_url=args.baseline, candidate_url=args.candidate, profile=args.profile,
        tokenizer_dir=Path(args.tokenizer), eval_set=args.set, model=args.target, max_tokens=args.max_tokens,
        timeout=args.request_timeout, limit=args.limit,
        thresholds=GateThresholds(min_exact_match_rate=args.min_exact_match,
                                  max_mean_log_prob_drop=args.max_logprob_drop,
                                  max_ref_chrf_drop=args.max_ref_chrf_drop),
        echo=(lambda line: None) if args.json else (lambda line: print(line, flush=True)),
    )
    report = run_eval(opts)
    if args.json:
        print(json.dumps({"baseline": args.baseline, "candidate": args.candidate, **report.to_dict()},
                         ensure_ascii=False, indent=2))
    else:
        print("\n" + format_report(report, args.baseline, args.candidate), flush=True)
    return 0 if report.ok else 1


def register(subparsers) -> None:
    from koserve.cli.conventions import TARGETS, add_max_tokens, add_profile, add_time
    from koserve.eval.dataset import DEFAULT_SET
    from koserve.eval.metrics import GateThresholds

    d = GateThresholds()
    p = subparsers.add_parser(
        "eval", help="Korean quality gate: a quantized deployment against a BF16 one, through the serving path",
        description="Send a Korean prompt set (shipped: ko-quality-v1, written for koserve) greedily through the "
        "--target model of two running deployments over gRPC: --baseline (BF16) and --candidate (quantized). "
        "Reports per prompt the first divergent token and whether the answers match, the mean log-likelihood per "
        "generated token where the engine returns log probabilities, and a character F-score against each "
        "prompt's reference text. Exit 0 when the candidate stays within every threshold, 1 when it falls "
        "behind (each failure named), 2 on bad input.",
        epilog="example: koserve eval --baseline 127.0.0.1:8001 --candidate 127.0.0.1:9001 -p komt-13b "
        "--tokenizer /models/komt-13b",
    )
    p.add_argument("--baseline", required=True, metavar="HOST:PORT", help="gRPC address of the BF16 deployment")
    p.add_argument("--candidate", required=True, metavar="HOST:PORT",
                   help="gRPC address of the quantized deployment")
    add_profile(p)
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="the model's tokenizer folder (tokenizer.json): answers are compared token by token")
    p.add_argument("--target", default="ensemble", choices=TARGETS,
                   help="Triton model both deployments are called through: the ensemble or the BLS model")
    p.add_argument("--set", default=DEFAULT_SET, metavar="NAME|FILE",
                   help="evaluation set: a shipped name or a JSONL file of {id, prompt, reference}")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts")
    add_max_tokens(p, default=48, help="greedy tokens per answer")
    add_time(p, "--request-timeout", default="2m", help="time limit of one request")
    p.add_argument("--min-exact-match", type=float, default=d.min_exact_match_rate, metavar="RATE",
                   help="fail when fewer answers than this fraction are identical to the baseline's")
    p.add_argument("--max-logprob-drop", type=float, default=d.max_mean_log_prob_drop, metavar="NATS",
                   help="fail when the mean log-likelihood per token falls by more than this")
    p.add_argument("--max-ref-chrf-drop", type=float, default=d.max_ref_chrf_drop, metavar="F",
                   help="fail when the mean character F-score against the references falls by more than this")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)
