#!/usr/bin/env python
"""Cancellation soak: sequential gRPC streams, alternating ``ensemble`` and ``tensorrt_llm_bls``, every 4th one
abandoned after two responses; the server must stay alive, leave no request in flight, and its python stubs' RSS must
not grow by 20 % or more.

    python scripts/soak_cancel.py                      # 2,000 requests, koserve's client, its own CPU server
    python scripts/soak_cancel.py --cancel raw         # how a raw tritonclient cancels: stop_stream(cancel_requests=True)
    python scripts/soak_cancel.py --requests 400 --json

``--cancel koserve`` abandons a stream the way koserve's client (and so the gateway and ``koserve chat``) does:
``ChatStream.close()``, which asks the engine to stop (TensorRT-LLM ``stop``), reads the stream to its final
response and only then closes it. ``--cancel raw`` cancels the gRPC call while the server is still writing — the
pattern that aborts Triton 2.51 (docs/reliability.md). Exit code 0 only when the server survived, nothing hung,
nothing was left in flight and RSS growth stayed under ``--max-rss-growth``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from koserve.server.health import rss_bytes, stub_processes  # noqa: E402
from koserve.server.tritonserver import in_flight_at_shutdown  # noqa: E402

MODELS = ("ensemble", "tensorrt_llm_bls")
PROMPT = "안녕하세요? 오늘 날씨 어때요?"


def _crash_lines(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    return [line.strip()[-160:] for line in lines
            if ("Signal (" in line and "Signal (15)" not in line) or "ASSERTION FAILED" in line or "API misuse" in line]


def stub_rss(server_pid: int) -> dict[str, int]:
    return {s.instance: rss_bytes(s.pid) for s in stub_processes(server_pid)}


def one_request(i: int, args, url: str, clients: dict, raw_client) -> tuple[str, str | None]:
    """Run request ``i``; returns (kind, error or None)."""
    model = MODELS[i % 2]
    cancel = i % 4 == 3
    kind = f"{model}/{'cancelled' if cancel else 'whole'}"
    if args.cancel == "raw":
        from koserve.server.triton_calls import grpc_stream, text_inputs  # noqa: PLC0415

        res = grpc_stream(url, model, text_inputs(PROMPT, args.max_tokens), request_id=f"soak-{uuid.uuid4().hex}",
                          timeout=args.request_timeout, cancel_after=2 if cancel else None, client=raw_client)
        if res.error is not None:
            return kind, res.error
        if not cancel and not res.text:
            return kind, "no text"
        return kind, None
    if args.cancel == "always":
        return kind, _cancel_always(url, model, cancel, args, raw_client)
    if args.cancel == "koserve-async":
        return kind, clients["loop"].run_until_complete(_async_request(clients[model], cancel, args))
    client = clients[model]
    stream = client.generate_stream(PROMPT, max_tokens=args.max_tokens, timeout=args.request_timeout)
    try:
        got = 0
        for _delta in stream:
            got += 1
            if cancel and got >= 2:
                break
    except Exception as exc:  # noqa: BLE001 - counted, reported
        return kind, f"{type(exc).__name__}: {exc}"
    finally:
        stream.close()
    if not cancel and not stream.result.text:
        return kind, "no text"
    return kind, None


async def _async_request(client, cancel: bool, args) -> str | None:
    """The asyncio client (as the gateway uses it): abandon with ``aclose()``."""
    stream = client.generate_stream(PROMPT, max_tokens=args.max_tokens, timeout=args.request_timeout)
    try:
        got, text = 0, ""
        async for delta in stream:
            got += 1
            text += delta
            if cancel and got >= 2:
                break
    except Exception as exc:  # noqa: BLE001 - counted, reported
        return f"{type(exc).__name__}: {exc}"
    finally:
        await stream.aclose()
    return None if cancel or text else "no text"


def _cancel_always(url: str, model: str, cancel: bool, args, client) -> str | None:
    """koserve's client before issue 18: every stream ends with ``stop_stream(cancel_requests=True)`` — also right
    after its final response — and an abandoned one also gets a TensorRT-LLM ``stop`` on a stream of its own that is
    cancelled as soon as its answer arrives."""
    import queue  # noqa: PLC0415

    from koserve.server.triton_calls import grpc_inputs, text_inputs  # noqa: PLC0415

    events: queue.SimpleQueue = queue.SimpleQueue()
    request_id = f"soak-{uuid.uuid4().hex}"
    client.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=args.request_timeout)
    error = None
    try:
        client.async_stream_infer(model, grpc_inputs(text_inputs(PROMPT, args.max_tokens)), request_id=request_id,
                                  enable_empty_final_response=True)
        got = 0
        while True:
            result, err = events.get(timeout=args.request_timeout)
            if err is not None:
                error = str(err)
                break
            got += 1
            final = result.get_response().parameters.get("triton_final_response")
            if (final is not None and final.bool_param) or (cancel and got >= 2):
                break
    finally:
        client.stop_stream(cancel_requests=True)
    if cancel:
        import numpy as np  # noqa: PLC0415

        stop = {"input_ids": np.zeros((1, 0), np.int32), "input_lengths": np.zeros((1, 1), np.int32),
                "request_output_len": np.zeros((1, 1), np.int32), "stop": np.ones((1, 1), np.bool_)}
        client.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=2.0)
        try:
            client.async_stream_infer("tensorrt_llm", grpc_inputs(stop), request_id=request_id,
                                      enable_empty_final_response=True)
            events.get(timeout=2.0)
        finally:
            client.stop_stream(cancel_requests=True)
    return error


def run(args, endpoints) -> dict:
    server = endpoints.server
    url = endpoints.grpc_url
    clients, raw_client = {}, None
    if args.cancel == "koserve":
        from koserve.client import ChatClient  # noqa: PLC0415

        clients = {m: ChatClient(url, endpoints.profile, model=m, retries=0) for m in MODELS}
    elif args.cancel == "koserve-async":
        import asyncio  # noqa: PLC0415

        from koserve.client import AsyncChatClient  # noqa: PLC0415

        clients = {m: AsyncChatClient(url, endpoints.profile, model=m, retries=0) for m in MODELS}
        clients["loop"] = asyncio.new_event_loop()
    else:
        import tritonclient.grpc as grpcclient  # noqa: PLC0415

        raw_client = grpcclient.InferenceServerClient(url)
    errors: dict[str, int] = {}
    first_errors: list[str] = []
    rss_start: dict[str, int] = {}
    died_at = None
    t0 = time.monotonic()
    done = 0
    try:
        for i in range(args.requests):
            if i == args.warmup:
                rss_start = stub_rss(server.process.pid)
            if time.monotonic() - t0 > args.max_seconds:
                break
            kind, error = one_request(i, args, url, clients, raw_client)
            done += 1
            if error is not None:
                errors[kind] = errors.get(kind, 0) + 1
                if len(first_errors) < 5:
                    first_errors.append(f"#{i} {kind}: {error[:200]}")
            if not server.is_alive():
                died_at = i
                break
        rss_end = stub_rss(server.process.pid) if server.is_alive() else {}
    finally:
        loop = clients.pop("loop", None)
        for c in clients.values():
            if loop is not None:
                loop.run_until_complete(c.close())
            else:
                c.close()
        if loop is not None:
            loop.close()
        if raw_client is not None:
            raw_client.close()
    elapsed = time.monotonic() - t0
    growth = {k: (rss_end[k] - v) / v for k, v in rss_start.items() if v and k in rss_end}
    alive = server.is_alive()
    in_flight = []
    log_crash = _crash_lines(server.log_path)  # before our SIGTERM: Triton 2.51 can also abort while stopping
    if alive:
        server.stop(grace=args.stop_grace)
        in_flight = [line[-120:] for line in in_flight_at_shutdown(server.log_path.read_text(errors="replace"))]
    shutdown_crash = _crash_lines(server.log_path)[len(log_crash):]
    max_growth = max(growth.values(), default=0.0)
    ok = (died_at is None and alive and not in_flight and not log_crash and done >= min(args.requests, 1)
          and max_growth < args.max_rss_growth and not errors)
    return {
        "ok": ok, "cancel": args.cancel, "requests": done, "cancelled": sum(1 for i in range(done) if i % 4 == 3),
        "seconds": round(elapsed, 1), "server_alive": died_at is None and alive, "died_after": died_at,
        "crash_log": log_crash, "shutdown_crash_log": shutdown_crash, "left_in_flight": in_flight, "errors": errors, "first_errors": first_errors,
        "rss_start_mib": {k: round(v / 2**20, 1) for k, v in rss_start.items()},
        "rss_end_mib": {k: round(v / 2**20, 1) for k, v in rss_end.items()},
        "rss_growth_pct": {k: round(100 * v, 1) for k, v in growth.items()},
        "max_rss_growth_pct": round(100 * max_growth, 1),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100, help="requests before the first RSS reading")
    p.add_argument("--cancel", choices=("koserve", "koserve-async", "raw", "always"), default="koserve",
                   help="koserve: koserve's client (koserve-async: its asyncio client, as the gateway); raw: cancel the call after two responses; always: cancel every "
                   "call when done, even after its final response (koserve's client before issue 18)")
    p.add_argument("--profile", default="akallama-70b")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--mode", choices=("replay", "hf"), default="replay",
                   help="engine stand-in: replay (deterministic text) or hf (the tiny random-weight checkpoint)")
    p.add_argument("--replay-delay-ms", type=float, default=2.0, help="replay engine delay per token")
    p.add_argument("--request-timeout", type=float, default=30.0)
    p.add_argument("--max-seconds", type=float, default=1800.0, help="stop sending after this long")
    p.add_argument("--max-rss-growth", type=float, default=0.20)
    p.add_argument("--stop-grace", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    if args.requests < 1 or not 0 <= args.warmup < args.requests:
        p.error("need --requests >= 1 and 0 <= --warmup < --requests")
    os.environ.setdefault("KOSERVE_CACHE", str(ROOT / ".cache" / "koserve"))
    from koserve.testing.stack import serve_cpu  # noqa: PLC0415

    with serve_cpu(args.profile, args.mode, replay_delay_ms=args.replay_delay_ms,
                   extra_args=("--exit-timeout-secs=5",)) as endpoints:
        figures = run(args, endpoints)
    if args.json:
        print(json.dumps(figures, ensure_ascii=False))
    else:
        for key, value in figures.items():
            print(f"{key:20s} {value}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
