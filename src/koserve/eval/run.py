"""The quality gate: every item of the set through the baseline (BF16) and the candidate (quantized) deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from koserve.eval.client import greedy_answer
from koserve.eval.dataset import DEFAULT_SET, load_eval_set
from koserve.eval.metrics import GateThresholds, QualityReport, compare_answers, judge


@dataclass
class EvalOptions:
    baseline_url: str  # gRPC host:port of the BF16 deployment
    candidate_url: str  # gRPC host:port of the quantized deployment
    profile: str
    tokenizer_dir: Path
    eval_set: str | Path = DEFAULT_SET
    model: str = "ensemble"
    max_tokens: int = 48
    timeout: float = 120.0
    limit: int | None = None
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    echo: Callable[[str], None] = lambda line: None


def run_eval(opts: EvalOptions) -> QualityReport:
    """Send each prompt (rendered with the profile's chat template) to both deployments, compare, judge."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    from koserve.chat.template import render_prompt  # noqa: PLC0415
    from koserve.text import load_tokenizer  # noqa: PLC0415

    items = load_eval_set(opts.eval_set, limit=opts.limit)
    tokenizer = load_tokenizer(opts.tokenizer_dir)
    comparisons = []
    with grpcclient.InferenceServerClient(opts.baseline_url) as base, \
            grpcclient.InferenceServerClient(opts.candidate_url) as cand:
        for n, item in enumerate(items, 1):
            prompt = render_prompt(opts.profile, [{"role": "user", "content": item.prompt}])
            answers = [greedy_answer(url, opts.model, prompt, tokenizer=tokenizer, max_tokens=opts.max_tokens,
                                     timeout=opts.timeout, client=client)
                       for url, client in ((opts.baseline_url, base), (opts.candidate_url, cand))]
            comparison = compare_answers(item.id, item.reference, *answers)
            comparisons.append(comparison)
            opts.echo(f"[{n}/{len(items)}] {item.id}: "
                      + ("identical" if comparison.exact_match else
                         f"diverges at token {comparison.first_divergent_token}"))
    return judge(comparisons, opts.thresholds)
