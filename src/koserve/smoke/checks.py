"""The acceptance checks of ``koserve gpu-smoke``: real client calls against a running koserve Triton server.

Each check talks to ``ensemble`` or ``tensorrt_llm_bls`` exactly as a client does (gRPC ``stream_infer`` and HTTP
``generate`` / ``generate_stream``) and returns a :class:`CheckResult`. They make no assumption about the engine, so
the same checks run against the CPU stand-in in the tests and against TensorRT-LLM on a GPU box:

* streamed text == non-streamed text with greedy sampling, no U+FFFD, over gRPC and HTTP;
* ``min_length`` (engine ``min_tokens``) keeps an end id from ending the answer early;
* ``random_seed`` (engine ``seed``) makes sampling at temperature 1 reproducible, and different seeds differ;
* cancelling a stream stops the engine's request (it finishes long before its full length).
"""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from koserve.server.triton_calls import grpc_stream, http_generate, http_generate_stream, text_inputs

KOREAN_PROMPT = "안녕하세요! 오늘 서울 날씨와 추천 음식을 한국어로 알려 주세요."
TEXT_MODELS = ("ensemble", "tensorrt_llm_bls")
ENGINE_MODEL = "tensorrt_llm"
REPLACEMENT_CHAR = "\ufffd"


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Target:
    """Where the checks send requests."""

    grpc_url: str  # host:port
    http_url: str  # http://host:port
    timeout: float = 120.0
    max_tokens: int = 24
    models: tuple[str, ...] = field(default=TEXT_MODELS)


def _rid(tag: str) -> str:
    return f"smoke-{tag}-{uuid.uuid4().hex[:12]}"


def _timed(name: str, fn) -> CheckResult:
    t0 = time.perf_counter()
    try:
        ok, detail = fn()
    except Exception as exc:  # noqa: BLE001 - a failing check is reported, not raised
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return CheckResult(name, bool(ok), detail, time.perf_counter() - t0)


def _grpc_text(target: Target, model: str, *, stream: bool, **params) -> str:
    res = grpc_stream(target.grpc_url, model,
                      text_inputs(KOREAN_PROMPT, params.pop("max_tokens", target.max_tokens), stream=stream,
                                  exclude_input_in_output=True, **params),
                      request_id=_rid(model), timeout=target.timeout)
    if res.error:
        raise RuntimeError(f"{model} over gRPC: {res.error}")
    for piece in res.pieces:
        if REPLACEMENT_CHAR in piece:
            raise RuntimeError(f"{model}: a streamed piece holds U+FFFD: {piece!r}")
    return res.text


def _payload(max_tokens: int, stream: bool, **params) -> dict:
    return {"text_input": KOREAN_PROMPT, "max_tokens": max_tokens, "stream": stream,
            "exclude_input_in_output": True, **params}


def check_stream_equals_whole(target: Target, model: str, protocol: str) -> CheckResult:
    """Greedy: the streamed pieces joined equal the one non-streamed answer; Korean, no U+FFFD."""

    def run():
        greedy = {"top_k": 1}
        if protocol == "grpc":
            streamed = _grpc_text(target, model, stream=True, **greedy)
            whole = _grpc_text(target, model, stream=False, **greedy)
        else:
            res = http_generate_stream(target.http_url, model, _payload(target.max_tokens, True, **greedy),
                                       timeout=target.timeout, request_id=_rid(model))
            if res.error:
                return False, f"generate_stream: {res.error}"
            streamed = res.text
            status, body = http_generate(target.http_url, model, _payload(target.max_tokens, False, **greedy),
                                         timeout=target.timeout, request_id=_rid(model))
            if status != 200 or "error" in body:
                return False, f"generate: HTTP {status} {body.get('error', '')}"
            out = body.get("text_output")
            whole = out[0] if isinstance(out, list) else out
        if REPLACEMENT_CHAR in streamed or REPLACEMENT_CHAR in whole:
            return False, "U+FFFD in the answer"
        if not whole:
            return False, "empty answer"
        if streamed != whole:
            return False, f"streamed {streamed[:40]!r}... != whole {whole[:40]!r}..."
        return True, f"{len(whole)} chars, identical"

    return _timed(f"{model} {protocol} stream == whole", run)


def engine_greedy_ids(target: Target, prompt_ids: list[int], count: int) -> list[int]:
    """The first ``count`` greedy tokens the engine (``tensorrt_llm``) generates after ``prompt_ids``."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    arrays = {
        "input_ids": np.asarray([prompt_ids], np.int32),
        "input_lengths": np.asarray([[len(prompt_ids)]], np.int32),
        "request_output_len": np.asarray([[count]], np.int32),
        "runtime_top_k": np.asarray([[1]], np.int32),
    }
    inputs = []
    for name, arr in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), "INT32")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    events: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(target.grpc_url)
    ids: list[int] = []
    try:
        client.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=target.timeout)
        client.async_stream_infer(ENGINE_MODEL, inputs, request_id=_rid("engine"), enable_empty_final_response=True)
        deadline = time.monotonic() + target.timeout
        while True:
            result, error = events.get(timeout=max(deadline - time.monotonic(), 0.01))
            if error is not None:
                raise RuntimeError(f"{ENGINE_MODEL}: {error}")
            out = result.as_numpy("output_ids")
            if out is not None:
                ids.extend(int(t) for t in out.reshape(-1) if t >= 0)
            final = result.get_response().parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return ids[:count]


def check_min_tokens(target: Target, model: str, prompt_ids: list[int]) -> CheckResult:
    """With ``end_id`` = the first greedy token the answer ends at once; ``min_length`` 4 keeps it going."""

    def run():
        first = engine_greedy_ids(target, prompt_ids, 1)
        if not first:
            return False, "the engine generated nothing greedily"
        without = _grpc_text(target, model, stream=False, top_k=1, end_id=first[0], max_tokens=8)
        with_min = _grpc_text(target, model, stream=False, top_k=1, end_id=first[0], min_length=4, max_tokens=8)
        if without:
            return False, f"end_id {first[0]} (the first greedy token) did not end the answer: {without!r}"
        if not with_min:
            return False, f"min_length 4 did not keep end_id {first[0]} out: the answer is empty"
        return True, f"end_id {first[0]}: no min_length -> empty, min_length 4 -> {len(with_min)} chars"

    return _timed(f"{model} min_tokens", run)


def check_seed(target: Target, model: str) -> CheckResult:
    """Temperature 1 sampling: one seed twice gives one answer; other seeds give others."""

    def run():
        sample = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 16}
        a = _grpc_text(target, model, stream=False, random_seed=1234, **sample)
        b = _grpc_text(target, model, stream=True, random_seed=1234, **sample)
        others = {_grpc_text(target, model, stream=False, random_seed=s, **sample) for s in (1, 2, 3, 4)}
        if a != b:
            return False, f"seed 1234 gave two answers: {a[:30]!r} / {b[:30]!r}"
        if others == {a}:
            return False, "five seeds gave the same sampled answer: the seed is ignored"
        return True, f"seed 1234 reproduced; {len(others | {a})} distinct answers over 5 seeds"

    return _timed(f"{model} seed", run)


def _engine_completed(target: Target) -> int:
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    with grpcclient.InferenceServerClient(target.grpc_url) as client:
        stats = client.get_inference_statistics(ENGINE_MODEL, as_json=True)
    total = 0
    for m in stats.get("model_stats", []):
        inf = m.get("inference_stats", {})
        total += int(inf.get("success", {}).get("count", 0)) + int(inf.get("fail", {}).get("count", 0))
    return total


def check_cancellation(target: Target, model: str, long_tokens: int) -> CheckResult:
    """Cancel a long stream after two responses: the engine's request ends long before its full length would.

    The engine counts two completed requests (the cancelled one and the TensorRT-LLM ``stop`` that cancels it)
    within half the time the remaining tokens would have taken."""
    from koserve.client._grpc import GrpcTransport  # noqa: PLC0415

    def run():
        before = _engine_completed(target)
        rid = _rid("cancel")
        inputs = text_inputs(KOREAN_PROMPT, long_tokens, stream=True, top_k=1, min_length=long_tokens,
                             exclude_input_in_output=True)
        t0 = time.perf_counter()
        res = grpc_stream(target.grpc_url, model, inputs, request_id=rid, timeout=target.timeout, cancel_after=2)
        first_two = time.perf_counter() - t0
        if res.error and "cancel" not in res.error.lower():
            return False, f"stream failed before the cancel: {res.error}"
        if model == "ensemble":  # Triton does not pass an ensemble's cancellation to its steps: stop the engine
            GrpcTransport(target.grpc_url).stop_engine(ENGINE_MODEL, rid)
        per_token = max(first_two / max(len(res.times), 1), 1e-4)
        remaining = (long_tokens - 2) * per_token
        deadline = time.perf_counter() + max(remaining / 2, 0.5)
        cancelled_at = time.perf_counter()
        while time.perf_counter() < deadline:
            if _engine_completed(target) >= before + 2:
                took = time.perf_counter() - cancelled_at
                return True, f"engine request ended {took:.2f} s after the cancel ({remaining:.1f} s of tokens left)"
            time.sleep(0.02)
        return False, f"the engine request was still running {remaining / 2:.1f} s after the cancel"

    return _timed(f"{model} cancellation", run)


def run_checks(target: Target, prompt_ids: list[int], *, long_tokens: int) -> list[CheckResult]:
    """Every check for every text model, in a fixed order."""
    results = []
    for model in target.models:
        for protocol in ("grpc", "http"):
            results.append(check_stream_equals_whole(target, model, protocol))
        results.append(check_min_tokens(target, model, prompt_ids))
        results.append(check_seed(target, model))
        results.append(check_cancellation(target, model, long_tokens))
    return results


def format_table(results: list[CheckResult]) -> str:
    width = max([len(r.name) for r in results] + [5])
    lines = [f"{'check':{width}s}  result  seconds  detail", f"{'-' * width}  ------  -------  ------"]
    for r in results:
        lines.append(f"{r.name:{width}s}  {'PASS' if r.ok else 'FAIL':6s}  {r.seconds:7.1f}  {r.detail}")
    failed = sum(not r.ok for r in results)
    lines.append(f"{len(results) - failed}/{len(results)} passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)
