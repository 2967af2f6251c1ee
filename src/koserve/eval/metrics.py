"""Pure comparisons of two deployments' greedy answers, and the gate's verdict.

* greedy agreement: the quantized (candidate) answer's tokens against the BF16 (baseline) answer's: the index of the
  first token that differs (``None``: none differs) and whether the whole answer matches;
* log-likelihood: the mean log probability per generated token of each deployment's own greedy answer, from the
  engine's ``output_log_probs`` (only where the engine returned them);
* reference: a character n-gram F-score (chrF-style, n = 1..3, β = 2) of each answer against the item's reference
  text, so a drift that keeps both deployments agreeing with each other but away from Korean shows too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Answer:
    """One deployment's greedy answer to one item."""

    text: str
    token_ids: tuple[int, ...]
    log_probs: tuple[float, ...] | None = None  # per generated token, when the engine returned them
    error: str | None = None

    @property
    def mean_log_prob(self) -> float | None:
        if not self.log_probs:
            return None
        return sum(self.log_probs) / len(self.log_probs)


@dataclass(frozen=True)
class ItemComparison:
    id: str
    first_divergent_token: int | None  # None: the answers agree token for token
    exact_match: bool
    baseline_tokens: int
    candidate_tokens: int
    baseline_mean_log_prob: float | None
    candidate_mean_log_prob: float | None
    baseline_ref_chrf: float
    candidate_ref_chrf: float
    error: str | None = None


@dataclass(frozen=True)
class GateThresholds:
    """How far the candidate may fall behind the baseline."""

    min_exact_match_rate: float = 0.5
    max_mean_log_prob_drop: float = 0.25  # nats per token
    max_ref_chrf_drop: float = 0.05


@dataclass
class QualityReport:
    items: list[ItemComparison]
    thresholds: GateThresholds
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def exact_match_rate(self) -> float:
        return sum(i.exact_match for i in self.items) / len(self.items) if self.items else 0.0

    @property
    def mean_first_divergence(self) -> float | None:
        """Mean index of the first divergent token over the items that diverge (None: none diverged)."""
        idx = [i.first_divergent_token for i in self.items if i.first_divergent_token is not None]
        return sum(idx) / len(idx) if idx else None

    def mean_log_probs(self) -> tuple[float | None, float | None]:
        """(baseline, candidate) mean per-token log probability over items where both engines returned them."""
        both = [i for i in self.items
                if i.baseline_mean_log_prob is not None and i.candidate_mean_log_prob is not None]
        if not both:
            return None, None
        return (sum(i.baseline_mean_log_prob for i in both) / len(both),
                sum(i.candidate_mean_log_prob for i in both) / len(both))

    def mean_ref_chrf(self) -> tuple[float, float]:
        n = len(self.items) or 1
        return (sum(i.baseline_ref_chrf for i in self.items) / n, sum(i.candidate_ref_chrf for i in self.items) / n)

    def to_dict(self) -> dict:
        base_lp, cand_lp = self.mean_log_probs()
        base_chrf, cand_chrf = self.mean_ref_chrf()
        return {
            "ok": self.ok, "failures": self.failures, "thresholds": asdict(self.thresholds),
            "items": len(self.items), "exact_match_rate": self.exact_match_rate,
            "mean_first_divergent_token": self.mean_first_divergence,
            "mean_log_prob": {"baseline": base_lp, "candidate": cand_lp},
            "reference_chrf": {"baseline": base_chrf, "candidate": cand_chrf},
            "per_item": [asdict(i) for i in self.items],
        }


def first_divergence(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int | None:
    """Index of the first position where ``a`` and ``b`` differ (a length difference counts); None if equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _ngrams(text: str, n: int) -> Counter:
    text = "".join(text.split())  # chrF ignores whitespace
    return Counter(text[i:i + n] for i in range(len(text) - n + 1))


def chrf(hypothesis: str, reference: str, *, max_n: int = 3, beta: float = 2.0) -> float:
    """Character n-gram F-score in [0, 1] (mean precision and recall over n = 1..max_n, recall weighted β)."""
    precisions, recalls = [], []
    for n in range(1, max_n + 1):
        hyp, ref = _ngrams(hypothesis, n), _ngrams(reference, n)
        if not hyp or not ref:
            continue
        overlap = sum((hyp & ref).values())
        precisions.append(overlap / sum(hyp.values()))
        recalls.append(overlap / sum(ref.values()))
    if not precisions:
        return 0.0
    p, r = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
    if p == 0 and r == 0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * p * r / (b2 * p + r)


def compare_answers(item_id: str, reference: str, baseline: Answer, candidate: Answer) -> ItemComparison:
    error = baseline.error or candidate.error
    div = first_divergence(baseline.token_ids, candidate.token_ids)
    return ItemComparison(
        id=item_id,
        first_divergent_token=0 if error else div,
        exact_match=error is None and div is None,
        baseline_tokens=len(baseline.token_ids), candidate_tokens=len(candidate.token_ids),
        baseline_mean_log_prob=baseline.mean_log_prob, candidate_mean_log_prob=candidate.mean_log_prob,
        baseline_ref_chrf=round(chrf(baseline.text, reference), 4),
        candidate_ref_chrf=round(chrf(candidate.text, reference), 4),
        error=error,
    )


def judge(items: list[ItemComparison], thresholds: GateThresholds) -> QualityReport:
    """The report, with a failure line for every threshold the candidate misses (and every failed request)."""
    report = QualityReport(items, thresholds)
    errors = [i for i in items if i.error]
    for i in errors:
        report.failures.append(f"{i.id}: request failed: {i.error}")
    rate = report.exact_match_rate
    if rate < thresholds.min_exact_match_rate:
        report.failures.append(f"greedy exact-match rate {rate:.2f} < {thresholds.min_exact_match_rate:.2f} "
                               f"({sum(i.exact_match for i in items)}/{len(items)} answers identical)")
    base_lp, cand_lp = report.mean_log_probs()
    if base_lp is not None and base_lp - cand_lp > thresholds.max_mean_log_prob_drop:
        report.failures.append(f"mean log-likelihood per token fell by {base_lp - cand_lp:.3f} nats "
                               f"({base_lp:.3f} -> {cand_lp:.3f}; limit {thresholds.max_mean_log_prob_drop})")
    base_chrf, cand_chrf = report.mean_ref_chrf()
    if base_chrf - cand_chrf > thresholds.max_ref_chrf_drop:
        report.failures.append(f"reference chrF fell by {base_chrf - cand_chrf:.3f} ({base_chrf:.3f} -> "
                               f"{cand_chrf:.3f}; limit {thresholds.max_ref_chrf_drop})")
    return report


def format_report(report: QualityReport, baseline: str, candidate: str) -> str:
    base_lp, cand_lp = report.mean_log_probs()
    base_chrf, cand_chrf = report.mean_ref_chrf()
    lp = "not returned by the engine" if base_lp is None else f"{base_lp:.3f} -> {cand_lp:.3f} nats/token"
    div = report.mean_first_divergence
    lines = [
        f"baseline  {baseline}",
        f"candidate {candidate}",
        "",
        f"{'ID':14s} {'MATCH':5s} {'DIVERGES AT':>11s} {'TOKENS':>9s} {'LOGP/TOK':>17s} {'REF chrF':>13s}",
    ]
    for i in report.items:
        at = "-" if i.first_divergent_token is None else str(i.first_divergent_token)
        logp = ("-" if i.baseline_mean_log_prob is None or i.candidate_mean_log_prob is None
                else f"{i.baseline_mean_log_prob:.2f}/{i.candidate_mean_log_prob:.2f}")
        lines.append(f"{i.id[:14]:14s} {'yes' if i.exact_match else 'no':5s} {at:>11s} "
                     f"{i.baseline_tokens:>4d}/{i.candidate_tokens:<4d} {logp:>17s} "
                     f"{i.baseline_ref_chrf:.2f}/{i.candidate_ref_chrf:.2f}"
                     + (f"  ERROR {i.error}" if i.error else ""))
    lines += [
        "",
        f"greedy exact-match rate  {report.exact_match_rate:.2f} (min {report.thresholds.min_exact_match_rate})",
        f"first divergent token    {'none diverged' if div is None else f'mean index {div:.1f}'}",
        f"mean log-likelihood      {lp} (max drop {report.thresholds.max_mean_log_prob_drop})",
        f"reference chrF           {base_chrf:.3f} -> {cand_chrf:.3f} (max drop {report.thresholds.max_ref_chrf_drop})",
    ]
    lines += [f"FAIL: {f}" for f in report.failures]
    lines.append("verdict: " + ("PASS" if report.ok else "FAIL"))
    return "\n".join(lines)
