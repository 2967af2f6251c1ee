#!/usr/bin/env python
"""Reliability figures of a real ``koserve serve`` on this machine (docs/reliability.md).

    python scripts/reliability_report.py            # bad inputs, faults, leaks (+ a 400-request cancellation soak)
    python scripts/reliability_report.py --soak 2000 --json

1. Bad inputs: each malformed request (the cases of tests/serving/test_bad_input.py) goes to ``ensemble``
   and ``tensorrt_llm_bls`` over gRPC (plus two HTTP ones); counted: tried / answered with a clear error (the message
   names what was wrong) / the server kept serving (a good request right after succeeds).
2. Faults: kill -9 of each python stub with a stream in flight, and of tritonserver itself; counted as recovered when
   ``/health/ready`` turned 503, the stream in flight ended (no hang), the server became ready again and both models
   answer. Then the behaviour of an abandoned stream: raw gRPC cancel vs koserve's client.
3. Leaks: SIGKILL of ``koserve serve`` (processes, listening ports, shm regions left), and the cancellation soak's
   stub RSS growth and requests left in flight (``scripts/soak_cancel.py``).
4. Fleet (``koserve.testing.fleet``; ``--no-fleet`` skips it): SIGTERM to ``koserve serve`` with 8 ``ensemble`` and
   8 ``tensorrt_llm_bls`` streams in flight (whole / cut, the refusal a new request gets, time to exit); two replicas
   behind ``koserve gateway`` restarted one after the other under ``koserve loadtest`` (failed requests); one replica
   killed with SIGKILL (its streams' errors, hung streams, new requests).
Exit code 0 when every bad input got a clear error with the server serving, every fault recovered and nothing leaked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("KOSERVE_CACHE", str(ROOT / ".cache" / "koserve"))

import numpy as np  # noqa: E402

from koserve.testing.faults import (  # noqa: E402
    live_processes_with,
    port_free,
    render_replay_repo,
    shm_regions,
    start_serve,
    wait_until,
)
from koserve.server.triton_calls import grpc_stream, http_generate, text_inputs  # noqa: E402

MODELS = ("ensemble", "tensorrt_llm_bls")
READY_TIMEOUT = 240.0


def _obj(*values) -> np.ndarray:
    return np.array([list(values)], dtype=np.object_)


def bad_inputs() -> list[tuple[str, dict, tuple[str, ...]]]:
    """(name, inputs, fragments a clear error contains; a tuple: one of them): the limits of a repository rendered
    with max_input_len 384 and max_seq_len 512."""
    def with_(name, value, base=None):
        inputs = base or text_inputs("안녕", 8)
        inputs[name] = value
        return inputs

    return [
        ("empty text", text_inputs("", 8), ("text_input is empty",)),
        ("whitespace text", text_inputs("  \n ", 8), ("text_input is empty",)),
        ("prompt over max_input_len", text_inputs("가나다라 " * 300, 8), ("max input length is 384",)),
        ("max_tokens 0", text_inputs("안녕", 0), ("max_tokens must be >= 1",)),
        ("max_tokens -5", text_inputs("안녕", -5), ("max_tokens must be >= 1",)),
        ("max_tokens over max_seq_len", text_inputs("안녕", 600), ("max_tokens (600)",)),
        ("temperature -0.5", text_inputs("안녕", 8, temperature=-0.5), ("temperature must be >= 0",)),
        ("top_p 0", text_inputs("안녕", 8, top_p=0.0), ("top_p must be in (0, 1]",)),
        ("top_p 1.5", text_inputs("안녕", 8, top_p=1.5), ("top_p must be in (0, 1]",)),
        ("top_k -1", text_inputs("안녕", 8, top_k=-1), ("top_k must be >= 0",)),
        ("invalid UTF-8 text", with_("text_input", _obj(b"\xea\xb0 broken \xff")), ("not valid UTF-8",)),
        ("max_tokens as FP32", with_("max_tokens", np.array([[8.0]], dtype=np.float32)), ("max_tokens", "INT32")),
        ("two prompts in one row", with_("text_input", _obj("하나".encode(), "둘".encode())),
         ("text_input", ("exactly one prompt", "unexpected shape"))),
        ("batch of two", {"text_input": np.array([["하나".encode()], ["둘".encode()]], dtype=np.object_),
                          "max_tokens": np.array([[4], [4]], dtype=np.int32)}, ("batch size 2",)),
        ("whitespace stop word", text_inputs("안녕", 8, stop_words=["  "]), ("stop_words[0]",)),
        ("overlong stop word", text_inputs("안녕", 8, stop_words=["끝" * 300]), ("stop_words[0]", "256")),
        ("invalid UTF-8 stop word", with_("stop_words", _obj(b"\xff\xfe")), ("stop_words[0]", "UTF-8")),
        ("end_id outside vocabulary", text_inputs("안녕", 8, end_id=999_999), ("end_id 999999",)),
        ("beam_width 4", text_inputs("안녕", 8, beam_width=4), ("beam_width must be 1",)),
    ]


def _has(text: str, fragment) -> bool:
    return any(f in text for f in fragment) if isinstance(fragment, tuple) else fragment in text


def good(url: str, model: str) -> bool:
    res = grpc_stream(url, model, text_inputs("안녕?", 4), request_id=uuid.uuid4().hex, timeout=30)
    return res.error is None and bool(res.text)


def run_bad_inputs(serve) -> dict:
    tried = clear = kept = 0
    unclear: list[str] = []
    for name, inputs, fragments in bad_inputs():
        for model in MODELS:
            tried += 1
            res = grpc_stream(serve.grpc_url, model, inputs, request_id=uuid.uuid4().hex, timeout=30)
            if res.error is not None and all(_has(res.error, f) for f in fragments):
                clear += 1
            else:
                unclear.append(f"{model}: {name}: {res.error or res.text!r}"[:200])
            kept += good(serve.grpc_url, model)
    http = f"http://127.0.0.1:{serve.http_port}"
    for model in MODELS:  # HTTP generate of a streamed request: 200 with an error body naming generate_stream
        tried += 1
        status, body = http_generate(http, model, {"text_input": "안녕", "max_tokens": 8, "stream": True},
                                     request_id=uuid.uuid4().hex)
        if "error" in body and "stream" in body["error"]:
            clear += 1
        else:
            unclear.append(f"{model}: HTTP generate of a stream: {status} {body}"[:200])
        kept += good(serve.grpc_url, model)
    tried += 1  # HTTP infer on a decoupled model
    req = urllib.request.Request(f"{http}/v2/models/ensemble/infer", method="POST", data=json.dumps({"inputs": [
        {"name": "text_input", "shape": [1, 1], "datatype": "BYTES", "data": ["안녕"]},
        {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [4]}]}).encode())
    try:
        urllib.request.urlopen(req, timeout=30)
        unclear.append("ensemble: HTTP infer on a decoupled model answered 200")
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        if "decoupled" in text.lower():
            clear += 1
        else:
            unclear.append(f"ensemble: HTTP infer: {exc.code} {text}"[:200])
    kept += good(serve.grpc_url, "ensemble")
    return {"tried": tried, "clear_error": clear, "server_kept_serving": kept, "unclear": unclear}


def stream_in_background(url: str, model: str, tokens: int = 200):
    started, outcome = threading.Event(), {}

    def run():
        outcome["res"] = grpc_stream(url, model, text_inputs("안녕하세요", tokens), request_id=uuid.uuid4().hex,
                                     timeout=120, on_piece=lambda _p: started.set())
        outcome["at"] = time.monotonic()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, started, outcome


def one_fault(serve, name: str, kill) -> dict:
    """Kill something under a stream in flight; measure until the server serves again."""
    model = "tensorrt_llm_bls" if "bls" in name else "ensemble"
    t, started, outcome = stream_in_background(serve.grpc_url, model)
    if not started.wait(30):
        return {"fault": name, "recovered": False, "why": "no stream started"}
    restarts = serve.ready()[1].get("restarts", 0)
    kill()
    t0 = time.monotonic()
    not_ready_s = None
    while time.monotonic() - t0 < 10:
        if serve.ready()[0] != 200:
            not_ready_s = time.monotonic() - t0
            break
        time.sleep(0.05)
    t.join(90)
    res = outcome.get("res")
    ended_s = outcome["at"] - t0 if "at" in outcome else None
    ready_s = None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        status, body = serve.ready()
        if status == 200 and body.get("restarts", 0) > restarts:
            ready_s = time.monotonic() - t0
            break
        time.sleep(0.2)
    serving = ready_s is not None and all(good(serve.grpc_url, m) for m in MODELS)
    recovered = not_ready_s is not None and ended_s is not None and serving
    return {"fault": name, "recovered": recovered, "not_ready_after_s": _r(not_ready_s),
            "stream_ended_after_s": _r(ended_s), "stream_error": (res.error or "")[:120] if res else None,
            "ready_again_after_s": _r(ready_s)}


def _r(x):
    return None if x is None else round(x, 2)


def abandoned_stream(how: str) -> dict:
    """Abandon a 200-token ensemble stream (20 ms a token: ~4 s) after two responses, then shut the server down at
    once: Triton logs each second how many inferences are still in flight, i.e. whether the engine went on."""
    from koserve.testing.stack import serve_cpu  # noqa: PLC0415
    from koserve.server.tritonserver import in_flight_at_shutdown  # noqa: PLC0415

    with serve_cpu("akallama-70b", "replay", replay_delay_ms=20.0, max_input_len=384, max_seq_len=512,
                   extra_args=("--exit-timeout-secs=10",)) as ep:
        t0 = time.monotonic()
        if how == "raw gRPC cancel":
            grpc_stream(ep.grpc_url, "ensemble", text_inputs("안녕하세요", 200), request_id=uuid.uuid4().hex,
                        timeout=30, cancel_after=2)
        else:
            from koserve.client import ChatClient  # noqa: PLC0415

            with ChatClient(ep.grpc_url, "akallama-70b", model="ensemble") as client:
                stream = client.generate_stream("안녕하세요", max_tokens=200)
                next(stream)
                next(stream)
                stream.close()
        closed = time.monotonic() - t0
        ep.server.stop(grace=15)
        waits = [line for line in in_flight_at_shutdown(ep.log_path.read_text(errors="replace"))
                 if "model versions" in line]
    return {"how": how, "closed_after_s": _r(closed), "in_flight_at_shutdown_for_s": len(waits)}


def run_abandoned() -> list[dict]:
    return [abandoned_stream(how) for how in ("raw gRPC cancel", "koserve client close()")]


def run_faults(serve) -> dict:
    faults = []
    for instance in ("postprocessing_0_0", "tensorrt_llm_bls_0_0", "tensorrt_llm_0_0", "preprocessing_0_0"):
        faults.append(one_fault(serve, f"kill -9 stub {instance}",
                                lambda i=instance: os.kill(serve.stub_pid(i), signal.SIGKILL)))
    faults.append(one_fault(serve, "kill -9 tritonserver", lambda: os.kill(serve.tritonserver_pid(), signal.SIGKILL)))
    return {"tried": len(faults), "recovered": sum(f["recovered"] for f in faults), "faults": faults}


def run_launcher_kill(serve) -> dict:
    prefix = serve.shm_prefix()
    ports = (serve.http_port, serve.grpc_port, serve.metrics_port, serve.health_port)
    serve.proc.send_signal(signal.SIGKILL)
    serve.proc.wait(timeout=10)
    t0 = time.monotonic()
    wait_until(lambda: not live_processes_with(prefix) and not shm_regions(prefix)
               and all(port_free(p) for p in ports), 20)
    return {"processes_left": len(live_processes_with(prefix)), "ports_still_listening": sum(not port_free(p) for p in ports),
            "shm_regions_left": len(shm_regions(prefix)), "cleaned_within_s": _r(time.monotonic() - t0)}


def run_soak(requests: int) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak_cancel.py"), "--requests", str(requests),
                           "--warmup", str(min(100, requests // 10)), "--json"],
                          capture_output=True, text=True, timeout=3600)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": proc.stderr[-500:]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--soak", type=int, default=400, help="cancellation-soak requests (0: skip)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-fleet", action="store_true",
                   help="skip the drain, the two-replica rolling restart and the SIGKILLed replica (about 3 minutes)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="koserve-reliability-") as tmp:
        repo = render_replay_repo(Path(tmp) / "repo", replay_delay_ms=20.0)
        serve = start_serve(repo, Path(tmp) / "serve.log", "--probe-interval=1", "--probe-timeout=5",
                            "--max-restarts=10", "--restart-grace=2")
        try:
            serve.wait_ready(READY_TIMEOUT)
            report = {"bad_inputs": run_bad_inputs(serve), "faults": run_faults(serve),
                      "launcher_sigkill": run_launcher_kill(serve)}
        finally:
            serve.stop()
    report["abandoned_stream"] = run_abandoned()
    if args.soak:
        report["soak"] = run_soak(args.soak)
    if not args.no_fleet:
        report["fleet"] = run_fleet()
    bad, faults, kill = report["bad_inputs"], report["faults"], report["launcher_sigkill"]
    soak = report.get("soak", {})
    leaks = kill["processes_left"] + kill["ports_still_listening"] + kill["shm_regions_left"]
    if soak:
        leaks += len(soak.get("left_in_flight", [])) + (soak.get("max_rss_growth_pct", 0) >= 20)
    report["leaks_found"] = leaks
    fleet = report.get("fleet", {})
    ok = (bad["clear_error"] == bad["tried"] == bad["server_kept_serving"] and faults["recovered"] == faults["tried"]
          and leaks == 0 and (not soak or soak.get("ok")) and (not fleet or fleet["ok"]))
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        print(f"bad inputs: {bad['tried']} tried, {bad['clear_error']} clear error, "
              f"{bad['server_kept_serving']} with the server still serving")
        for line in bad["unclear"]:
            print(f"  unclear: {line}")
        print(f"faults: {faults['tried']} tried, {faults['recovered']} recovered")
        for f in faults["faults"]:
            print(f"  {f['fault']:34s} recovered={f['recovered']!s:5s} not ready after {f.get('not_ready_after_s')} s, "
                  f"stream ended after {f.get('stream_ended_after_s')} s ({f.get('stream_error')!r}), "
                  f"ready again after {f.get('ready_again_after_s')} s")
        for a in report["abandoned_stream"]:
            print(f"abandoned ensemble stream, {a['how']:24s} still in flight for ~{a['in_flight_at_shutdown_for_s']} s "
                  f"at shutdown (closed after {a['closed_after_s']} s)")
        print(f"SIGKILL of koserve serve: {kill['processes_left']} processes, {kill['ports_still_listening']} ports, "
              f"{kill['shm_regions_left']} shm regions left (checked within {kill['cleaned_within_s']} s)")
        if soak:
            print(f"cancellation soak: {soak.get('requests')} requests, {soak.get('cancelled')} abandoned, server "
                  f"alive={soak.get('server_alive')}, left in flight {len(soak.get('left_in_flight', []))}, "
                  f"max stub RSS growth {soak.get('max_rss_growth_pct')} %")
        print(f"leaks found: {leaks}")
        if fleet:
            print_fleet(fleet)
    return 0 if ok else 1


def run_fleet() -> dict:
    """Drain on SIGTERM, two replicas restarted one after the other under load, a replica killed (issue 30)."""
    from dataclasses import asdict  # noqa: PLC0415

    from koserve.testing.fleet import run_drain, run_replica_kill, run_rolling_restart  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="koserve-fleet-") as tmp:
        drain = asdict(run_drain(Path(tmp) / "drain"))
        rolling = asdict(run_rolling_restart(Path(tmp) / "roll"))
        kill = asdict(run_replica_kill(Path(tmp) / "kill"))
    ok = (sum(drain["cut"].values()) == 0 and drain["exit_code"] == 0 and rolling["failed"] == 0
          and rolling["requests"] > 0 and all(r["exit_code"] == 0 for r in rolling["restarts"]) and kill["hung"] == 0
          and all(a["done"] for a in kill["after"]))
    return {"drain": drain, "rolling_restart": rolling, "replica_sigkill": kill, "ok": ok}


def print_fleet(fleet: dict) -> None:
    d, r, k = fleet["drain"], fleet["rolling_restart"], fleet["replica_sigkill"]
    print(f"drain (SIGTERM to koserve serve, {sum(d['whole'].values()) + sum(d['cut'].values())} streams in flight): "
          f"whole {d['whole']}, cut {d['cut']}; /health/ready 503 after {_r(d['unready_after_s'])} s; a new request "
          f"got {d['refusal']!r}; exit {d['exit_code']} after {_r(d['exit_after_s'])} s")
    print(f"rolling restart (2 replicas behind the gateway, koserve loadtest): {r['requests']} requests, "
          f"{r['failed']} failed; per replica served/refused "
          f"{ {url: (v['served'], v['refused']) for url, v in r['replicas'].items()} }")
    for x in r["restarts"]:
        print(f"  {x['replica']}: SIGTERM -> exit {x['exit_code']} after {_r(x['exit_s'])} s, ready again after "
              f"{_r(x['ready_again_s'])} s; {x['drain_line'].removeprefix('koserve: ')}")
    cut = [s for s in k["streams"] if not s["done"]]
    first_errors = sorted({s["error"] for s in cut if s["error"]})[:1]
    print(f"replica SIGKILL: {len(cut)} of {len(k['streams'])} streams ended with an error "
          f"({first_errors}), {k['hung']} hung; {sum(a['done'] for a in k['after'])} of {len(k['after'])} new requests "
          f"succeeded, the first {_r(k['first_ok_after_s'])} s after the kill")


if __name__ == "__main__":
    sys.exit(main())
