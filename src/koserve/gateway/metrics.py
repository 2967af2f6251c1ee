"""The gateway's Prometheus metrics, under vLLM's names (what AIPerf, vLLM's Grafana dashboard, the production-stack
KEDA recipes and the Gateway API Inference Extension read) plus koserve's earlier names, kept as aliases.

Names and types follow vLLM's ``vllm/v1/metrics/loggers.py`` (vllm-project/vllm@005a810b): label ``model_name``;
``vllm:num_requests_running`` / ``vllm:num_requests_waiting`` gauges; ``vllm:prompt_tokens`` /
``vllm:generation_tokens`` counters (exposed with ``_total``); histograms ``vllm:time_to_first_token_seconds``,
``vllm:time_per_output_token_seconds``, ``vllm:e2e_request_latency_seconds``, ``vllm:request_prompt_tokens``,
``vllm:request_generation_tokens``; ``vllm:request_success`` by ``finished_reason``. ``vllm:inter_token_latency_seconds``
is the newer vLLM name of the per-token gap (same observations as ``time_per_output_token``). The mapping is in
docs/gateway.md.

With several worker processes (``koserve gateway --workers N``) every process writes its values to
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from koserve.client import ChatResult

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# vLLM's buckets (loggers.py@005a810b)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """One gateway app's metrics (its own registry; in multiprocess mode the values live in shared files)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        m = ["model_name"]
        live = {"multiprocess_mode": "livesum"}
        self.running = Gauge("vllm:num_requests_running", "Requests streaming tokens (after their first token)", m,
                             registry=r, **live)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests admitted and waiting for their first token", m,
                             registry=r, **live)
        self.prompt = Counter("vllm:prompt_tokens", "Prompt tokens", m, registry=r)
        self.generation = Counter("vllm:generation_tokens", "Generated tokens", m, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to the first token", m, registry=r,
                              buckets=TTFT_BUCKETS)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Gap between consecutive tokens", m, registry=r,
                             buckets=TPOT_BUCKETS)
        self.tpot = Histogram("vllm:time_per_output_token_seconds", "Gap between consecutive tokens (vLLM's earlier "
                              "name of inter_token_latency)", m, registry=r, buckets=TPOT_BUCKETS)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Whole-request latency", m, registry=r,
                             buckets=E2E_BUCKETS)
        self.request_prompt = Histogram("vllm:request_prompt_tokens", "Prompt tokens per request", m, registry=r,
                                        buckets=TOKEN_BUCKETS)
        self.request_generation = Histogram("vllm:request_generation_tokens", "Generated tokens per request", m,
                                            registry=r, buckets=TOKEN_BUCKETS)
        self.success = Counter("vllm:request_success", "Finished requests by finish reason",
                               [*m, "finished_reason"], registry=r)
        # koserve's earlier names (aliases; koserve_gateway_requests also counts failures by HTTP status)
        self.requests = Counter("koserve_gateway_requests", "Requests by model, endpoint and HTTP status",
                                ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("koserve_gateway_request_seconds", "Whole-request latency",
                                 ["model", "endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.ttft_alias = Histogram("koserve_gateway_time_to_first_token_seconds", "Time to the first token",
                                    ["model"], registry=r, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.prompt_alias = Counter("koserve_gateway_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.completion_alias = Counter("koserve_gateway_completion_tokens", "Generated tokens", ["model"],
                                        registry=r)
        self.in_flight = Gauge("koserve_gateway_requests_in_flight", "Requests being served", ["model"],
                               registry=r, **live)

    def admitted(self, model: str) -> None:
        """A request was accepted and sent: it waits for its first token."""
        self.in_flight.labels(model).inc()
        self.waiting.labels(model).inc()

    def first_token(self, model: str) -> None:
        self.waiting.labels(model).dec()
        self.running.labels(model).inc()

    def finished(self, model: str, endpoint: str, status: int, started: float, result: ChatResult | None,
                 *, streamed: bool) -> None:
        """The request ended (``streamed``: :meth:`first_token` was called for it)."""
        (self.running if streamed else self.waiting).labels(model).dec()
        self.in_flight.labels(model).dec()
        elapsed = time.perf_counter() - started
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(elapsed)
        if result is None:
            return
        self.e2e.labels(model).observe(elapsed)
        self.success.labels(model, result.finish_reason if result.finish_reason != "cancelled" else "abort").inc()
        if result.ttft is not None:
            self.ttft.labels(model).observe(result.ttft)
            self.ttft_alias.labels(model).observe(result.ttft)
        prompt, generated = result.prompt_tokens or 0, result.completion_tokens or 0
        if prompt:
            self.prompt.labels(model).inc(prompt)
            self.prompt_alias.labels(model).inc(prompt)
        self.request_prompt.labels(model).observe(prompt)
        if generated:
            self.generation.labels(model).inc(generated)
            self.completion_alias.labels(model).inc(generated)
        self.request_generation.labels(model).observe(generated)
        times = result.token_times
        if len(times) > 1:
            itl, tpot = self.itl.labels(model), self.tpot.labels(model)
            for a, b in zip(times, times[1:]):
                itl.observe(b - a)
                tpot.observe(b - a)

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and content type: this process's registry, or every worker's in multiprocess mode."""
        if multiprocess_dir():
            from prometheus_client import multiprocess  # noqa: PLC0415

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
