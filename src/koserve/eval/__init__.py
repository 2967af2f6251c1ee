"""`koserve eval`: a Korean quality gate comparing a quantized deployment with a BF16 one through the serving path.

* :mod:`koserve.eval.dataset`: the shipped Korean prompt set (``data/ko-quality-v1.jsonl``, written for koserve) or
  a file of the same shape;
* :mod:`koserve.eval.metrics`: pure comparisons (first divergent token, exact match, log-likelihood, reference
  character F-score) and the gate's verdict;
* :mod:`koserve.eval.client`: greedy requests through a deployment's ``ensemble`` / ``tensorrt_llm_bls`` with
  ``return_log_probs``;
* :mod:`koserve.eval.run`: the whole comparison and its report.
"""

from koserve.eval.dataset import EvalItem, load_eval_set
from koserve.eval.metrics import GateThresholds, ItemComparison, QualityReport, compare_answers
from koserve.eval.run import EvalOptions, run_eval

__all__ = [
    "EvalItem",
    "EvalOptions",
    "GateThresholds",
    "ItemComparison",
    "QualityReport",
    "compare_answers",
    "load_eval_set",
    "run_eval",
]
