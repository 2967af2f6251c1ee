"""The TensorRT-LLM backend's own Prometheus metric families, exported by the CPU stand-in from its scheduler.

Names, label keys and label values are those of NVIDIA's C++ ``tensorrtllm`` backend
(``inflight_batcher_llm/src/custom_metrics_reporter/custom_metrics_reporter.cc``: tensorrtllm_backend v0.19.0 and
TensorRT-LLM's ``triton_backend`` of the 1.x era; cited in tests/fleet/data/trtllm_metrics.json). Every metric
carries ``model`` and ``version`` plus the family's category label, as the backend's ``TritonMetricGroup`` does.
Routers (the Gateway API Inference Extension's endpoint picker) and autoscalers read
``nv_trt_llm_request_metrics{request_type=waiting|scheduled}`` and
``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=fraction|tokens_per|max}``; ``koserve serve`` reads
``request_type=active|waiting`` to know when a draining server is idle.

Values follow the backend's own formulas (``model_instance_state.cc`` ``ModelInstanceState::WaitForStats``, v0.19.0):
``active`` = the executor's ``numActiveRequests``, ``scheduled`` = ``numScheduledRequests``, ``waiting`` =
``active - scheduled``, ``max`` = ``maxNumActiveRequests``, KV ``fraction`` = ``used / max``. In the stand-in the
requests it decodes (at most ``max_batch_size``) are the scheduled ones and those in its queue the waiting ones, so
``active`` = both (it can exceed ``max``, which TensorRT-LLM's cannot: its surplus stays in the executor queue,
which no metric shows). The stand-in has no paged KV cache: its blocks are what TensorRT-LLM's would hold for the
same sequences (``ceil(tokens / tokens_per_block)`` per decoded sequence, ``max_batch_size × ceil(max_seq_len /
tokens_per_block)`` in all).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

REQUEST_FAMILY = "nv_trt_llm_request_metrics"
KV_CACHE_FAMILY = "nv_trt_llm_kv_cache_block_metrics"
INFLIGHT_FAMILY = "nv_trt_llm_inflight_batcher_metrics"
GENERAL_FAMILY = "nv_trt_llm_general_metrics"

# family -> (description as NVIDIA words it, category label key, label values in NVIDIA's order)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    REQUEST_FAMILY: ("TRT LLM request metrics", "request_type", ("active", "max", "scheduled", "context", "waiting")),
    KV_CACHE_FAMILY: ("TRT LLM KV cache block metrics", "kv_cache_block_type",
                      ("max", "free", "used", "tokens_per", "reused", "fraction")),
    INFLIGHT_FAMILY: ("TRT LLM inflight_batcher-specific metrics", "inflight_batcher_specific_metric",
                      ("total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests")),
    GENERAL_FAMILY: ("General TRT LLM metrics", "general_type", ("timestamp", "iteration_counter")),
}
DEFAULT_TOKENS_PER_BLOCK = 64  # TensorRT-LLM's trtllm-build --tokens_per_block default
UPDATE_PERIOD_S = 0.25


@dataclass(frozen=True)
class EngineStats:
    """What the scheduler holds at one moment (TensorRT-LLM's iteration-stats fields)."""

    active: int  # decoded now (admitted, not finished): TensorRT-LLM's scheduled requests
    max_requests: int  # max_batch_size
    context: int  # active, no token generated yet (context phase)
    waiting: int  # queued, not admitted yet
    active_tokens: tuple[int, ...]  # prompt + generated tokens of each active sequence
    context_tokens: int  # prompt tokens of the sequences in context phase
    iterations: int  # scheduler rounds so far
    max_seq_len: int
    timestamp_us: int = 0

    @property
    def generation(self) -> int:
        return self.active - self.context


def kv_blocks(stats: EngineStats, tokens_per_block: int = DEFAULT_TOKENS_PER_BLOCK) -> dict[str, float]:
    """``kv_cache_block_type`` values: blocks the active sequences hold, out of what the batch could hold."""
    total = stats.max_requests * math.ceil(stats.max_seq_len / tokens_per_block)
    used = min(total, sum(math.ceil(n / tokens_per_block) for n in stats.active_tokens))
    return {"max": total, "free": total - used, "used": used, "tokens_per": tokens_per_block, "reused": 0,
            "fraction": used / total if total else 0.0}


def metric_values(stats: EngineStats, tokens_per_block: int = DEFAULT_TOKENS_PER_BLOCK) -> dict[str, dict[str, float]]:
    """family -> label value -> value, for every metric NVIDIA's backend exports in these families."""
    return {
        REQUEST_FAMILY: {"active": stats.active + stats.waiting, "max": stats.max_requests, "scheduled": stats.active,
                         "context": stats.context, "waiting": stats.waiting},
        KV_CACHE_FAMILY: kv_blocks(stats, tokens_per_block),
        INFLIGHT_FAMILY: {"total_context_tokens": stats.context_tokens, "generation_requests": stats.generation,
                          "micro_batch_id": 0, "paused_requests": 0},
        GENERAL_FAMILY: {"timestamp": stats.timestamp_us, "iteration_counter": stats.iterations},
    }


class TritonEngineMetrics:
    """The families on Triton's metrics port through the python backend's custom-metrics API
    (``pb_utils.MetricFamily``), refreshed from ``read_stats()`` every ``period`` s by a daemon thread."""

    def __init__(self, pb_utils, model: str, version: str, read_stats, *,
                 tokens_per_block: int = DEFAULT_TOKENS_PER_BLOCK, period: float = UPDATE_PERIOD_S):
        self._read, self._tokens_per_block, self._period = read_stats, tokens_per_block, period
        self._families = []  # kept alive: a family's metrics vanish with it
        self._metrics: dict[tuple[str, str], object] = {}
        for name, (description, key, values) in FAMILIES.items():
            family = pb_utils.MetricFamily(name=name, description=description, kind=pb_utils.MetricFamily.GAUGE)
            self._families.append(family)
            for value in values:
                self._metrics[(name, value)] = family.Metric(labels={"model": model, "version": version, key: value})
        self._last: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="koserve-engine-metrics", daemon=True)

    def start(self) -> "TritonEngineMetrics":
        self.update()
        self._thread.start()
        return self

    def update(self) -> None:
        for family, values in metric_values(self._read(), self._tokens_per_block).items():
            for label, value in values.items():
                key = (family, label)
                if self._last.get(key) != value:  # each set() is a round trip to Triton
                    self._metrics[key].set(float(value))
                    self._last[key] = value

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.update()
            except Exception:  # noqa: BLE001 - metrics must never take the engine down (server shutting down)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2 * self._period + 1)
