"""gpu-smoke's load step: a bounded concurrent gRPC load through the ensemble, with koserve's own client calls.

Runs in the production image as built: no locust (the ``loadtest`` extra's locust and its gevent stack are not in
the image; ``koserve loadtest`` stays the tool for real load tests). ``concurrency`` threads each stream Korean
prompts of koserve's shipped prompt sets one after another until ``seconds`` have passed or ``max_requests`` were
sent; every request has its own timeout, so the step ends within ``seconds + timeout``.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

from koserve.server.triton_calls import grpc_stream, text_inputs

REPLACEMENT_CHAR = "\ufffd"


@dataclass(frozen=True)
class LoadSpec:
    grpc_url: str
    model: str = "ensemble"
    seconds: float = 30.0
    concurrency: int = 4
    max_tokens: int = 32
    max_requests: int = 10_000
    timeout: float = 120.0
    max_error_rate: float = 0.01
    prompts: str = "all"  # a prompt set of koserve.loadtest.prompts


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    pieces: int = 0
    seconds: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    first_error: str = ""

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0

    def summary(self) -> str:
        ttft = sorted(self.ttfts)
        p50 = f"{ttft[len(ttft) // 2] * 1000:.0f} ms" if ttft else "-"
        text = (f"{self.requests} requests in {self.seconds:.1f} s ({self.requests / max(self.seconds, 1e-9):.1f}/s), "
                f"{self.errors} errors ({self.error_rate:.1%}), {self.pieces} streamed pieces, TTFT p50 {p50}")
        return text + (f"; first error: {self.first_error}" if self.first_error else "")


def _prompt_texts(name: str) -> list[str]:
    from koserve.loadtest.prompts import load_prompt_set  # noqa: PLC0415 - plain Python, no locust

    texts = [m["content"] for p in load_prompt_set(name) for m in p.messages if m.get("role") == "user"]
    if not texts:
        raise ValueError(f"prompt set {name!r} holds no user messages")
    return texts


def run_load(spec: LoadSpec) -> LoadResult:
    """Send streams until the time or request budget is spent; never raises for a failed request."""
    texts = _prompt_texts(spec.prompts)
    result = LoadResult()
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + spec.seconds

    def take() -> int | None:
        with lock:
            if time.monotonic() >= deadline or result.requests >= spec.max_requests:
                return None
            result.requests += 1
            return result.requests

    def worker() -> None:
        while (n := take()) is not None:
            res = grpc_stream(spec.grpc_url, spec.model,
                              text_inputs(texts[n % len(texts)], spec.max_tokens, stream=True,
                                          exclude_input_in_output=True),
                              request_id=f"smoke-load-{uuid.uuid4().hex[:12]}", timeout=spec.timeout)
            error = res.error
            if error is None and not res.pieces:
                error = "no text streamed"
            if error is None and any(REPLACEMENT_CHAR in piece for piece in res.pieces):
                error = "a streamed piece holds U+FFFD"
            with lock:
                result.pieces += len(res.pieces)
                if error is not None:
                    result.errors += 1
                    result.first_error = result.first_error or error[:300]
                elif res.ttft is not None:
                    result.ttfts.append(res.ttft)

    threads = [threading.Thread(target=worker, name=f"smoke-load-{i}", daemon=True) for i in range(spec.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(deadline - time.monotonic(), 0) + spec.timeout + 10)
    result.seconds = time.monotonic() - start
    if any(t.is_alive() for t in threads):
        result.errors += 1
        result.first_error = result.first_error or "a load thread did not finish within its timeout"
    return result


def check_load(spec: LoadSpec) -> tuple[bool, str]:
    """Run the load; pass when at least one request was sent and the error rate is within ``max_error_rate``."""
    result = run_load(spec)
    ok = result.requests > 0 and result.error_rate <= spec.max_error_rate
    return ok, f"{result.summary()} (limit {spec.max_error_rate:.0%} errors)"
