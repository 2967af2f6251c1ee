"""The report: percentiles, warm-up, summary, SLOs (with units), Prometheus deltas, plots."""

from __future__ import annotations

import json
import random

import pytest

from koserve.errors import ConfigError
from koserve.loadtest.prompts import LengthSampler, SyntheticPromptSource, corpus_text, load_prompt_set
from koserve.loadtest.report import (
    check_slos,
    parse_slos,
    percentile,
    prometheus_delta,
    render_markdown,
    summarize,
    write_report,
)


def test_percentile_matches_linear_interpolation():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_warmup_records_are_counted_but_left_out_of_every_figure(make_record):
    records = [make_record(start=0.0, end=5.0, ttft=3.0, e2e=5.0, warmup=True),
               make_record(start=1.0, end=2.0, ttft=0.1, e2e=1.0), make_record(start=1.5, end=2.5, ttft=0.3, e2e=1.0)]
    s = summarize(records)
    assert s["warmup_requests"] == 1 and s["requests"] == 2 and s["succeeded"] == 2
    assert s["ttft_ms"]["max"] == pytest.approx(300.0) and s["duration_s"] == pytest.approx(1.5)


def test_prompt_tokens_are_what_the_model_received(token_counter, make_record):
    from koserve.chat import render_prompt
    from koserve.profiles import load_profile

    profile = load_profile("akallama-70b")
    counter = token_counter("akallama-70b")
    rng = random.Random(0)
    src = SyntheticPromptSource(corpus_text(load_prompt_set("all")), isl=LengthSampler(128, rng=rng),
                                osl=LengthSampler(8, rng=rng), counter=counter)
    req = src.next()
    assert abs(req.input_tokens - 128) <= 2
    assert req.model_prompt_tokens == req.input_tokens + 1  # sent as it is: the server adds BOS
    rendered = render_prompt(profile, req.messages)
    # through the gateway the model gets the chat template and the default system prompt as well
    assert counter.prompt_tokens(rendered) > req.input_tokens + 20
    assert counter.prompt_tokens(rendered) == len(counter.text_tokenizer.encode(rendered))
    s = summarize([make_record(prompt_tokens=300, prompt_tokens_source="server"), make_record(prompt_tokens=310)])
    assert s["prompt_tokens_per_request"]["mean"] == pytest.approx(305.0)
    assert s["input_tokens_per_request"]["mean"] == pytest.approx(5.0)


def test_summary_counts_failures_and_computes_rates(make_record):
    records = [
        make_record(start=0.0, end=1.0, output_tokens=10, itls=[0.01] * 9, e2e=1.0),
        make_record(start=0.5, end=2.0, output_tokens=20, itls=[0.02] * 19, e2e=1.5, ttft=0.3),
        make_record(start=1.0, end=1.1, error="connection refused", ttft=None, itls=[], chunks=0, output_tokens=0),
    ]
    s = summarize(records)
    assert (s["requests"], s["succeeded"], s["failed"]) == (3, 2, 1)
    assert s["error_rate"] == pytest.approx(1 / 3, abs=1e-6)
    assert s["duration_s"] == pytest.approx(2.0)
    assert s["requests_per_s"] == pytest.approx(1.0)
    assert s["output_tokens_per_s"] == pytest.approx(15.0)
    assert s["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert s["itl_ms"]["max"] == pytest.approx(20.0)
    assert s["errors"] == [{"message": "connection refused", "count": 1}]


def test_slos_parse_units_and_detect_misses(make_record):
    slos = parse_slos("ttft_p99=2s, itl_p99=100ms, e2e_p50=1500us, error_rate=1%, output_tokens_per_s=10")
    assert [(s.metric, s.limit) for s in slos] == [
        ("ttft_p99", 2000.0), ("itl_p99", 100.0), ("e2e_p50", 1.5), ("error_rate", 0.01), ("output_tokens_per_s", 10.0)
    ]
    summary = summarize([make_record(), make_record(start=1000.5, end=1001.5)])
    results = {r["metric"]: r["passed"] for r in check_slos(slos, summary)}
    assert results == {"ttft_p99": True, "itl_p99": True, "e2e_p50": False, "error_rate": True,
                       "output_tokens_per_s": False}
    # no measurement (every request failed) is a miss, not a pass
    failed = summarize([make_record(error="boom", ttft=None, itls=[])])
    assert check_slos(parse_slos("ttft_p99=10s"), failed)[0]["passed"] is False
    for bad, msg in (("ttft_p99", "name=value"), ("ttft_p42=1s", "unknown metric"), ("itl_p99=fast", "duration")):
        with pytest.raises(ConfigError, match=msg):
            parse_slos(bad)


PROM_BEFORE = """# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 10
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="ensemble",version="1"} 1
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="ensemble",version="1"} 1000000
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="ensemble",version="1"} 5000
"""


def test_prometheus_delta_per_model():
    after = (PROM_BEFORE.replace("} 10\n", "} 30\n").replace("} 1000000", "} 11000000")
             .replace("} 5000", "} 25000"))
    delta = prometheus_delta(PROM_BEFORE, after)
    assert delta["ensemble"]["request_success"] == 20
    assert delta["ensemble"]["request_failure"] == 0
    assert delta["ensemble"]["avg_request_ms"] == pytest.approx(500.0)
    assert delta["ensemble"]["avg_queue_ms"] == pytest.approx(1.0)


def test_report_folder_has_summary_and_plots(tmp_path, make_record):
    records = [make_record(start=1000.0 + i * 0.3, end=1001.0 + i * 0.3, concurrency=1 + i % 3) for i in range(30)]
    records.append(make_record(start=1005.0, end=1005.2, error="stopped", ttft=None, itls=[]))
    summary = write_report(tmp_path, records, meta={"protocol": "grpc"}, slos=parse_slos("ttft_p99=1ms"),
                           metrics_before=PROM_BEFORE, metrics_after=PROM_BEFORE)
    for name in ("summary.json", "summary.md", "latency_over_time.png", "throughput_over_time.png",
                 "ttft_vs_concurrency.png"):
        assert (tmp_path / name).stat().st_size > 100, name
    assert (tmp_path / "latency_over_time.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["slos_passed"] is False and saved["failed"] == 1
    md = (tmp_path / "summary.md").read_text()
    assert "**MISSED**" in md and "| TTFT (ms) |" in md and "| ensemble |" in md
    assert render_markdown(summary, [], None).count("|---") >= 2


def test_throughput_rates_use_a_rolling_window_of_a_few_seconds():
    from koserve.loadtest.report import plot_window, rolling_rate

    # 16 requests finishing together every second (a closed loop of 16 streams): 0.5 s buckets swing 0 <-> 32
    ends = [float(t) + 0.999 for t in range(30) for _ in range(16)]
    grid = [i * 0.25 for i in range(121)]
    window = plot_window(30.0)
    assert 2.0 <= window <= 5.0
    rates = rolling_rate(ends, None, grid, window, 30.0)
    inner = rates[8:-8]
    assert min(inner) > 12 and max(inner) < 20  # ~16/s, readable
    assert rolling_rate([1.0, 2.0], [3.0, 5.0], [1.5], 2.0, 10.0) == [pytest.approx(4.0)]


@pytest.mark.parametrize("slo, summary, text, passed", [
    ("tpot_p99=50ms", {"tpot_ms": {"p99": 439.6}}, "439.6 ms > 50.0 ms", False),
    ("ttft_p50=2s", {"ttft_ms": {"p50": 120.0}}, "120.0 ms ≤ 2,000.0 ms", True),
    ("error_rate=1%", {"error_rate": 0.25}, "25.00 % > 1.00 %", False),
    ("output_tokens_per_s=500", {"output_tokens_per_s": 812.0}, "812.0/s ≥ 500.0/s", True),
    ("e2e_p99=1s", {"e2e_ms": {"p99": None}}, "not measured (no successful request) vs 1,000.0 ms", False),
])
def test_slo_lines_carry_units_and_the_relation_that_holds(slo, summary, text, passed):
    from koserve.loadtest.report import slo_comparison

    (result,) = check_slos(parse_slos(slo), summary)
    assert slo_comparison(result) == text and result["passed"] is passed
