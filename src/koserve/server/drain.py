"""``koserve serve``'s drain on SIGTERM: stop taking requests, let every stream in flight finish, then stop Triton.

Triton's own SIGTERM handling cannot drain an ensemble: ``InferenceServer::Stop`` stops every model's scheduler at
once (core ``server.cc`` → ``ModelLifeCycle::StopAllModels``, same in r24.10 = 2.51 and r26.04 = 2.68), and an
ensemble sends a *new* request to ``postprocessing`` for each engine response, which the stopped scheduler refuses
("Server is stopping, scheduler for model has stopped accepting new inference requests"): every ensemble stream in
flight ends there, and the ensemble then stays "in flight" until ``--exit-timeout-secs`` runs out. So koserve serve
drains *before* it signals tritonserver:

1. ``/health/ready`` answers 503 (phase ``draining``);
2. the drain file appears (:mod:`koserve.triton_models.drain`): ``preprocessing``, ``tensorrt_llm_bls`` and the CPU
   engine stand-in refuse new requests with ``UNAVAILABLE`` "server is draining ... retry on another replica";
3. it waits until the engine holds no request — TensorRT-LLM's own ``nv_trt_llm_request_metrics``
   ``request_type=active`` and ``waiting`` on Triton's metrics port are 0 (the CPU stand-in exports the same) — for
   at most the drain grace;
4. then SIGTERM to tritonserver (which now finds nothing in flight and exits), SIGKILL after ``--stop-grace``.

The grace is :func:`drain_grace`: the profile's ``max_new_tokens`` at a stated worst inter-token time, plus a
first-token allowance.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REQUEST_FAMILY = "nv_trt_llm_request_metrics"
# the stated worst time between two tokens of one stream on the production GPUs at full batch (10 tokens/s per
# stream; docs/reliability.md "Drain" says where it comes from)
WORST_INTER_TOKEN_S = 0.1
FIRST_TOKEN_ALLOWANCE_S = 10.0  # queueing + prefill of a long prompt at full batch
DEFAULT_DRAIN_GRACE_S = 60.0  # a repository koserve did not render (no profile to derive from)
POLL_S = 0.25
IDLE_POLLS = 2  # consecutive idle readings
SETTLE_S = 0.5  # after the engine is idle: the last responses pass postprocessing / the BLS

_SAMPLE = re.compile(r'^nv_trt_llm_request_metrics\{([^}]*)\}\s+([0-9.eE+-]+)', re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def drain_grace(max_new_tokens: int, worst_inter_token_s: float = WORST_INTER_TOKEN_S,
                first_token_s: float = FIRST_TOKEN_ALLOWANCE_S) -> float:
    """Seconds a stream that just started may still need: first token, then ``max_new_tokens`` tokens."""
    return first_token_s + max_new_tokens * worst_inter_token_s


def repo_drain_grace(repo: Path, worst_inter_token_s: float = WORST_INTER_TOKEN_S) -> float:
    """:func:`drain_grace` for the profile a repository was rendered for (:data:`DEFAULT_DRAIN_GRACE_S` without)."""
    from koserve.repo.render import read_repo_info  # noqa: PLC0415

    name = read_repo_info(repo).get("profile")
    if not name:
        return DEFAULT_DRAIN_GRACE_S
    from koserve.profiles import load_profile  # noqa: PLC0415

    return drain_grace(load_profile(name).generation.max_new_tokens, worst_inter_token_s)


@dataclass(frozen=True)
class EngineLoad:
    """The engine's requests by TensorRT-LLM's ``request_type`` (summed over engine models)."""

    active: float
    waiting: float

    @property
    def idle(self) -> bool:
        return self.active == 0 and self.waiting == 0


def parse_engine_load(text: str) -> EngineLoad | None:
    """``nv_trt_llm_request_metrics`` ``active`` and ``waiting`` from a Prometheus page; None when absent."""
    found: dict[str, float] = {}
    for labels, value in _SAMPLE.findall(text):
        kind = dict(_LABEL.findall(labels)).get("request_type")
        if kind in ("active", "waiting"):
            found[kind] = found.get(kind, 0.0) + float(value)
    if "active" not in found:
        return None
    return EngineLoad(found["active"], found.get("waiting", 0.0))


def read_engine_load(metrics_url: str, timeout: float = 2.0) -> EngineLoad | None:
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as resp:
            return parse_engine_load(resp.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, ValueError):
        return None


@dataclass
class DrainResult:
    idle: bool  # the engine went idle within the grace
    seconds: float
    why: str


def wait_engine_idle(metrics_url: str, grace_s: float, *, poll_s: float = POLL_S, alive=lambda: True,
                     clock=time.monotonic, sleep=time.sleep) -> DrainResult:
    """Wait (at most ``grace_s``) until the engine reports no active or waiting request on ``IDLE_POLLS``
    consecutive reads, then :data:`SETTLE_S` more. Without the metric the whole grace is waited (nothing tells when
    the streams end). Ends early when ``alive()`` turns false (tritonserver exited)."""
    start = clock()
    deadline = start + grace_s
    idle_reads = 0
    seen_metric = False
    while clock() < deadline:
        if not alive():
            return DrainResult(True, clock() - start, "tritonserver is gone")
        load = read_engine_load(metrics_url)
        if load is not None:
            seen_metric = True
            idle_reads = idle_reads + 1 if load.idle else 0
            if idle_reads >= IDLE_POLLS:
                sleep(min(SETTLE_S, max(0.0, deadline - clock())))
                return DrainResult(True, clock() - start, "the engine holds no request")
        sleep(min(poll_s, max(0.0, deadline - clock())))
    why = "grace ran out with requests still in the engine" if seen_metric else \
        f"no {REQUEST_FAMILY} on {metrics_url}: waited the whole grace"
    return DrainResult(False, clock() - start, why)
