"""`koserve loadtest` end to end: locust (a real subprocess) against real tritonservers running the koserve model
repository with the replay engine, which streams a fixed Korean token sequence at REPLAY_DELAY_MS per token.

Tolerances (2 shared cores): ITL p50 within ±5 ms of the 20 ms pace; TTFT p50 between one pace and pace + 200 ms.
"""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import pytest

from koserve.cli import main as koserve
from koserve.loadtest.metrics import read_records

pytestmark = [pytest.mark.server, pytest.mark.timeout(120)]

PACE_MS = 20.0
ITL_TOLERANCE_MS = 5.0


def run(out: Path, url: str, *args: str) -> tuple[int, dict, list]:
    code = koserve(["loadtest", "--url", url, "--out", str(out), *args])
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    records = read_records(sorted((out / "records").glob("*.jsonl")))
    return code, summary, records


def clean_length(profile, replay_ids, token_counter, candidates) -> tuple[int, str]:
    """An output length whose text re-tokenizes to exactly that many ids (no character split at the cut)."""
    ids, counter = replay_ids(profile), token_counter(profile)
    for n in candidates:
        text = counter.decode(ids[:n])
        if counter(text) == n:
            return n, text
    raise AssertionError("no clean cut among the candidates")


def test_grpc_ensemble_fixed_concurrency_report(tmp_path, replay_llama3, replay_ids, token_counter, capsys):
    osl, text = clean_length("akallama-70b", replay_ids, token_counter, (24, 25, 23, 26))
    out = tmp_path / "report"
    code, s, records = run(
        out, replay_llama3.grpc_url, "--protocol", "grpc", "--target", "ensemble", "--profile", "akallama-70b",
        "--prompts", "all", "--max-tokens", str(osl), "--shape", "fixed", "--concurrency", "4", "--duration", "6s",
        "--metrics-url", replay_llama3.metrics_url,
        "--slo", "ttft_p99=5s,tpot_p99=30ms,chunk_gap_p99=250ms,itl_p99=250ms,error_rate=0",
    )
    assert code == 0, (out / "locust.log").read_text()[-3000:]
    captured = capsys.readouterr()
    # live progress while it ran (plain lines: stderr is not a terminal here), then the summary
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("loadtest: ") and "/6s" in ln]
    assert lines and "in flight" in lines[-1] and "output tok/s" in lines[-1] and "TTFT p50" in lines[-1], captured.err
    assert "run ended: the planned duration of 6s ran out" in captured.out
    assert "TPOT ms:" in captured.out and "chunk gap ms:" in captured.out
    assert s["run"]["end_reason"] == "duration"
    for name in ("summary.md", "summary.json", "latency_over_time.png", "throughput_over_time.png",
                 "ttft_vs_concurrency.png", "locust_stats.csv", "locust_stats_history.csv", "metrics-before.prom",
                 "metrics-after.prom", "locust.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    # every request got exactly what the replay engine emitted
    assert len(records) >= 20 and s["failed"] == 0
    assert {r.output_tokens for r in records} == {osl}
    assert {r.output_chars for r in records} == {len(text)}
    assert all(osl - 6 <= r.chunks <= osl for r in records)  # a split character arrives as one chunk
    assert s["output_tokens_total"] == osl * s["succeeded"]
    assert s["max_concurrency"] == 4

    # timing follows the replay pace: TPOT per request sits on it, chunk gaps around it (a split character)
    assert abs(s["itl_ms"]["p50"] - PACE_MS) <= ITL_TOLERANCE_MS, s["itl_ms"]
    assert s["chunk_gap_ms"] == s["itl_ms"]
    assert abs(s["tpot_ms"]["p50"] - PACE_MS) <= 2.0 and s["tpot_ms"]["p99"] <= s["chunk_gap_ms"]["p99"], s
    for r in records:
        assert r.tpot == pytest.approx((r.e2e - r.ttft) / (osl - 1))
    # prompt tokens: the rendered chat prompt (template + system prompt) as the server encodes it
    from koserve.chat import render_prompt
    from koserve.loadtest.prompts import load_prompt_set
    from koserve.profiles import load_profile

    counter, profile = token_counter("akallama-70b"), load_profile("akallama-70b")
    chats = {p.id: list(p.messages) for p in load_prompt_set("all")}
    for r in records:
        rendered = render_prompt(profile, chats[r.prompt_id])
        assert r.prompt_tokens == len(counter.text_tokenizer.encode(rendered)) > r.input_tokens - 1
    assert s["prompt_tokens_source"] == "tokenizer"
    assert PACE_MS * 0.9 <= s["ttft_ms"]["p50"] <= PACE_MS + 200, s["ttft_ms"]
    expected_e2e = s["ttft_ms"]["p50"] + (osl - 1) * PACE_MS
    assert abs(s["e2e_ms"]["p50"] - expected_e2e) <= 0.25 * expected_e2e, s["e2e_ms"]
    # 4 streams, each ~1000/PACE tokens/s at most
    assert 0.5 * 4 * 1000 / PACE_MS <= s["output_tokens_per_s"] <= 4 * 1000 / PACE_MS * 1.05

    # locust saw the same measures as separate events
    with open(out / "locust_stats.csv", encoding="utf-8") as fh:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(fh)}
    for name in ("ttft", "tpot", "chunk_gap", "e2e", "output_tokens", "output_tokens_per_s"):
        assert int(rows[("grpc", name)]["Request Count"]) > 0, name
    assert 0 < int(rows[("grpc", "e2e")]["Request Count"]) <= len(records)
    assert float(rows[("grpc", "output_tokens")]["Average Response Time"]) == pytest.approx(osl)

    # the server's own counters moved by at least what we measured
    assert s["prometheus"]["ensemble"]["request_success"] >= s["succeeded"]
    assert s["slos_passed"] is True
    assert "| TTFT (ms) |" in (out / "summary.md").read_text(encoding="utf-8")


def test_http_bls_request_budget_and_missed_slo(tmp_path, replay_llama3, replay_ids, token_counter):
    osl, _ = clean_length("akallama-70b", replay_ids, token_counter, (16, 17, 15))
    t0 = time.monotonic()
    code, s, records = run(
        tmp_path / "r", replay_llama3.http_url, "--protocol", "http", "--target", "tensorrt_llm_bls",
        "--prompts", "synthetic", "--isl", "64", "--max-tokens", str(osl), "--concurrency", "3", "--duration", "1m",
        "--max-requests", "12", "--warmup-requests", "3", "--metrics-url", "none", "--slo", "itl_p99=1ms",
        "--no-plots",
    )
    assert time.monotonic() - t0 < 40  # the request budget ended the run, not the 60 s shape
    assert code == 1 and s["slos_passed"] is False
    assert s["run"]["end_reason"] == "max_requests" and "--max-requests 12" in s["run"]["end_detail"]
    assert len(records) == 15 and sum(r.warmup for r in records) == 3  # warm-up first, not counted
    assert all(r.warmup for r in sorted(records, key=lambda r: r.start)[:3])
    # a phase of its own: no measured request starts before every warm-up request finished
    assert min(r.start for r in records if not r.warmup) >= max(r.end for r in records if r.warmup)
    assert s["requests"] == 12 and s["warmup_requests"] == 3 and s["failed"] == 0
    assert all(r.prompt_tokens == r.input_tokens + 1 for r in records)  # sent as it is; the server adds BOS
    assert {r.protocol for r in records} == {"http"} and {r.model for r in records} == {"tensorrt_llm_bls"}
    assert {r.output_tokens for r in records} == {osl}
    assert all(62 <= r.input_tokens <= 66 for r in records)
    assert abs(s["itl_ms"]["p50"] - PACE_MS) <= ITL_TOLERANCE_MS


def test_poisson_arrivals_and_step_ramp(tmp_path, replay_llama3):
    code, s, records = run(
        tmp_path / "poisson", replay_llama3.grpc_url, "--shape", "poisson", "--rate", "6", "--concurrency", "16",
        "--duration", "5", "--max-tokens", "8", "--metrics-url", "none", "--no-plots",
    )
    assert code == 0 and s["failed"] == 0
    assert 10 <= len(records) <= 60  # 30 expected; Poisson counts vary
    t0 = records[0].start
    assert sum(r.start - t0 < 0.3 for r in records) <= 8  # arrivals are spread, not a burst of 16

    code, s, records = run(
        tmp_path / "step", replay_llama3.grpc_url, "--shape", "step", "--concurrency", "1", "--step-users", "2",
        "--step-duration", "2", "--max-users", "5", "--duration", "6", "--max-tokens", "8", "--metrics-url", "none",
        "--no-plots",
    )
    assert code == 0 and s["failed"] == 0
    assert [r.concurrency for r in records[:3]] == [1, 1, 1]  # one user first
    late = [r.concurrency for r in records if r.start - records[0].start > 4.2]
    assert late and max(late) == 5 and s["max_concurrency"] == 5  # 1, 3, then the ceiling of 5


def test_failures_counted_when_the_server_stops_mid_run(tmp_path, replay_komt, replay_ids, token_counter):
    osl, text = clean_length("komt-13b", replay_ids, token_counter, (40, 41, 39, 42, 43))
    out = tmp_path / "r"
    done = threading.Event()

    def stop_after_some_successes():
        # Stop once a few requests have completed (locust's start-up time varies with load, so no fixed timer):
        # SIGTERM, then SIGKILL after 0.5 s, as under steady load a gracefully stopping Triton keeps serving.
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            files = sorted((out / "records").glob("*.jsonl")) if (out / "records").is_dir() else []
            if sum(r.ok for r in read_records(files)) >= 3:
                break
            done.wait(0.1)
        replay_komt.server.stop(grace=0.5)

    stopper = threading.Thread(target=stop_after_some_successes, daemon=True)
    t0 = time.monotonic()
    stopper.start()
    try:
        code, s, records = run(
            out, replay_komt.http_url, "--protocol", "http", "--profile", "komt-13b", "--max-tokens", str(osl),
            "--concurrency", "4", "--duration", "12", "--request-timeout", "5", "--metrics-url", "none",
            "--slo", "error_rate=0",
        )
    finally:
        done.set()
        stopper.join(timeout=10)
    assert time.monotonic() - t0 < 60
    assert not replay_komt.server.is_alive()
    assert code == 1  # error_rate=0 missed
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    assert ok and failed, (len(ok), len(failed))
    assert s["failed"] == len(failed) and s["error_rate"] == pytest.approx(len(failed) / len(records), abs=1e-6)
    assert all(r.error for r in failed) and s["errors"]
    assert all(r.start >= ok[0].start for r in failed)
    assert {r.output_tokens for r in ok} == {osl} and {r.output_chars for r in ok} == {len(text)}


@pytest.fixture
def gateway(replay_llama3, tmp_path):
    """`koserve gateway` (a subprocess) in front of the shared replay server."""
    import subprocess
    import sys
    import urllib.request

    from koserve.server.tritonserver import free_port

    port = free_port()
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "koserve", "gateway", "--model", f"akallama-70b={replay_llama3.grpc_url}",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gateway not healthy within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_openai_gateway_user(tmp_path, gateway, replay_ids, token_counter):
    osl, text = clean_length("akallama-70b", replay_ids, token_counter, (20, 21, 19))
    code, s, records = run(
        tmp_path / "r", gateway, "--protocol", "openai", "--profile", "akallama-70b", "--prompts", "short",
        "--max-tokens", str(osl), "--concurrency", "3", "--duration", "5", "--slo", "itl_p99=250ms",
    )
    assert code == 0 and s["failed"] == 0 and len(records) >= 5
    assert {r.protocol for r in records} == {"openai"} and {r.model for r in records} == {"akallama-70b"}
    assert {r.output_tokens for r in records} == {osl}  # the gateway's usage.completion_tokens
    # the model received the chat template and the default system prompt, as the gateway's usage says
    from koserve.chat import render_prompt
    from koserve.loadtest.prompts import load_prompt_set
    from koserve.profiles import load_profile

    assert s["prompt_tokens_source"] == "server"
    chats = {p.id: list(p.messages) for p in load_prompt_set("short")}
    user_only = token_counter("akallama-70b")
    for r in records:
        rendered = render_prompt(load_profile("akallama-70b"), chats[r.prompt_id])
        assert r.prompt_tokens == user_only.prompt_tokens(rendered)
        assert r.prompt_tokens > user_only(chats[r.prompt_id][-1]["content"]) + 20  # template + system prompt
    assert abs(s["tpot_ms"]["p50"] - PACE_MS) <= 2.0
    assert {r.output_chars for r in records} == {len(text)}
    assert abs(s["itl_ms"]["p50"] - PACE_MS) <= ITL_TOLERANCE_MS
    assert (tmp_path / "r" / "metrics-after.prom").is_file()  # the gateway's own /metrics


def test_an_unknown_openai_model_fails_loudly(tmp_path, gateway, capfd):
    """The issue's run: every request refused by the gateway (no such model). The console names the reason and the
    exit code is 1 (it was 0 with the reason only in summary.md)."""
    code, s, _ = run(tmp_path / "r", gateway, "--protocol", "openai", "--openai-model", "nope", "--duration", "3s",
                     "--max-requests", "6", "--no-progress")
    assert code == 1 and s["succeeded"] == 0 and s["failed"] >= 1
    out, err = capfd.readouterr()
    assert "most frequent errors" in out and "nope" in out.split("most frequent errors", 1)[1], out
    assert "koserve: error: no request succeeded" in err


def test_server_error_messages_are_reported(tmp_path, replay_llama3, capfd):
    code, s, records = run(
        tmp_path / "r", replay_llama3.grpc_url, "--max-tokens", "100000", "--concurrency", "2", "--duration", "10",
        "--max-requests", "4", "--metrics-url", "none", "--slo", "error_rate=0",
    )
    assert code == 1 and len(records) == 4 and s["failed"] == 4
    message = s["errors"][0]["message"]
    assert "100000" in message or "max_tokens" in message, message  # the server's own words
    out, err = capfd.readouterr()
    assert "most frequent errors (4 failed requests):" in out and f" × {message}" in out  # on the console too
    assert "no request succeeded (4 failed)" in err
    assert "SLO error_rate=0: 100.00 % > 0.00 % MISSED" in out
    assert "no plots: no request succeeded" in out and not list((tmp_path / "r").glob("*.png"))
    assert "Plots: none, no request succeeded" in (tmp_path / "r" / "summary.md").read_text(encoding="utf-8")


def test_echo_shows_locust_output_and_still_prints_progress(tmp_path, replay_llama3, capfd):
    code, s, records = run(
        tmp_path / "r", replay_llama3.grpc_url, "--max-tokens", "8", "--concurrency", "2", "--duration", "7s",
        "--metrics-url", "none", "--no-plots", "--echo",
    )
    assert code == 0 and s["failed"] == 0 and records
    out, err = capfd.readouterr()
    # locust's own stats tables, printed every 2 s while it runs (the final summary alone has two)
    assert "chunk_gap" in out + err and (out + err).count("# reqs") >= 4, (out + err)[-3000:]
    progress = [ln for ln in err.splitlines() if ln.startswith("loadtest: ") and "/7s" in ln]
    assert len(progress) >= 1 and "in flight" in progress[-1], err[-2000:]
    assert not (tmp_path / "r" / "locust.log").read_text()  # echoed, not logged


@pytest.mark.timeout(240)
def test_run_that_ends_mid_stream_leaves_nothing_in_flight(tmp_path):
    """The run ends while its users are in the middle of their streams: they read them to the final response
    (locust's --stop-timeout is the request timeout) instead of cancelling the gRPC call, which would leave an
    ensemble request running inside Triton until max_tokens (and is the pattern of Triton 2.51's cancellation
    abort): Triton, stopped right after the run, finds nothing in flight."""
    from koserve.testing.stack import serve_cpu
    from koserve.server.tritonserver import in_flight_at_shutdown

    with serve_cpu("akallama-70b", "replay", replay_delay_ms=PACE_MS, workdir=tmp_path / "triton",
                   extra_args=("--exit-timeout-secs=3",), max_input_len=1536, max_seq_len=2048) as ep:
        # 400 tokens at 20 ms: every stream is still running when the 4 s run ends
        code, summary, _ = run(tmp_path / "report", ep.grpc_url, "--profile", "akallama-70b", "--target", "ensemble",
                               "--prompts", "short", "--max-tokens", "400", "--concurrency", "2", "--duration", "4s",
                               "--metrics-url", "none", "--no-progress")
        assert code == 0
        assert summary["run"]["end_reason"] == "duration"
        ep.server.stop()
        log = ep.log_path.read_text(errors="replace")
    assert in_flight_at_shutdown(log) == [], in_flight_at_shutdown(log)
    assert "Found 0 model versions that have in-flight inferences" in log
