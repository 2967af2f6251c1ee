"""The serving benchmark's summary: medians per cell, per-round ratios, the direct engine's own spread, CPU."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

BENCH = runpy.run_path(str(Path(__file__).resolve().parents[2] / "scripts" / "bench_serving.py"), run_name="bench")


def _row(model, rep, tps, streams=64):
    return {"model": model, "streams": streams, "repeat": rep, "tokens_per_s": tps, "ttft_p50_ms": 1.0,
            "ttft_p99_ms": 2.0, "gap_p50_ms": 3.0, "gap_p99_ms": 4.0, "tokens_per_response": 1.0,
            "client_lag_max_ms": 0.0}


ROWS = [
    _row("tensorrt_llm", 0, 3000), _row("ensemble", 0, 2700),
    _row("ensemble", 1, 2000), _row("tensorrt_llm", 1, 4000),
    _row("tensorrt_llm", 2, 2500), _row("ensemble", 2, 2500),
    _row("tensorrt_llm", 0, 9999, streams=16),  # another concurrency: never mixed in
]


def test_round_ratios_pair_each_round_with_its_own_direct_run():
    assert BENCH["round_ratios"](ROWS, "ensemble", 64) == pytest.approx([0.9, 0.5, 1.0])
    assert BENCH["round_ratios"](ROWS, "tensorrt_llm_bls", 64) == []


def test_the_direct_rows_range_over_its_median_is_the_printed_noise():
    direct = BENCH["summarize"](ROWS, ["tensorrt_llm"], [64, 16])[0]
    low, high = direct["tokens_per_s_min"] / direct["tokens_per_s"], direct["tokens_per_s_max"] / direct["tokens_per_s"]
    assert (low, high) == pytest.approx((2500 / 3000, 4000 / 3000))


def test_summarize_takes_medians_per_cell():
    table = BENCH["summarize"](ROWS, ["tensorrt_llm", "ensemble"], [64])
    assert [(r["model"], r["runs"], r["tokens_per_s"]) for r in table] == [("tensorrt_llm", 3, 3000.0),
                                                                            ("ensemble", 3, 2500.0)]
    assert (table[1]["tokens_per_s_min"], table[1]["tokens_per_s_max"]) == (2000, 2700)


def test_cpu_per_token_keeps_processes_that_spent_cpu_and_medians_fill_absent_ones_with_zero():
    before = {"client": 1.0, "tritonserver": 2.0, "postprocessing": 0.5}
    after = {"client": 1.4, "tritonserver": 2.8, "postprocessing": 0.5}
    run = BENCH["cpu_per_token"](before, after, 4000)
    assert run == pytest.approx({"client": 100.0, "tritonserver": 200.0})  # postprocessing spent nothing
    rows = [{"model": "ensemble", "streams": 64, "cpu_us_per_token": cpu}
            for cpu in (run, {"client": 300.0}, {"client": 200.0, "tritonserver": 100.0, "postprocessing": 0.4})]
    assert BENCH["median_cpu"](rows, "ensemble", 64) == pytest.approx(
        {"client": 200.0, "postprocessing": 0.0, "tritonserver": 100.0})
    assert BENCH["median_cpu"](rows, "tensorrt_llm", 64) == {}
    assert BENCH["format_cpu"]({"client": 200.0, "postprocessing": 0.4, "tritonserver": 100.0}) == (
        "client 200  tritonserver 100  (all 300)")


def _cpu_row(model, cpu, streams=64):
    return {"model": model, "streams": streams, "cpu_us_per_token": cpu}


CPU_ROWS = [
    _cpu_row("tensorrt_llm", {"client": 180.0, "tritonserver": 140.0, "tensorrt_llm": 100.0}),
    _cpu_row("tensorrt_llm", {"client": 170.0, "tritonserver": 160.0, "tensorrt_llm": 100.0}),
    _cpu_row("ensemble", {"client": 150.0, "tritonserver": 200.0, "tensorrt_llm": 100.0, "postprocessing": 50.0}),
    _cpu_row("tensorrt_llm_bls", {"client": 140.0, "tritonserver": 150.0, "tensorrt_llm": 100.0,
                                  "tensorrt_llm_bls": 80.0}),
    _cpu_row("tensorrt_llm_bls", {"client": 140.0, "tritonserver": 150.0, "tensorrt_llm": 100.0,
                                  "tensorrt_llm_bls": 80.0}, streams=256),  # no direct run at 256
]


def test_server_cpu_leaves_out_the_client():
    assert BENCH["server_us"]({"client": 100.0, "tritonserver": 20.0, "postprocessing": 5.0}) == 25.0
    assert BENCH["server_us"]({}) == 0


def test_capacity_rows_split_each_stub_into_koserves_own_and_the_python_backends_share():
    own = {("postprocessing", 64): 10.0, ("tensorrt_llm_bls", 64): 25.0}
    rows = BENCH["capacity_rows"](CPU_ROWS, ["tensorrt_llm", "ensemble", "tensorrt_llm_bls"], [64, 256], own,
                                  {"tensorrt_llm_bls": 2, "postprocessing": 1})
    by = {(r["model"], r["streams"]): r for r in rows}
    assert set(by) == {("tensorrt_llm", 64), ("ensemble", 64), ("tensorrt_llm_bls", 64), ("tensorrt_llm_bls", 256)}
    direct = by[("tensorrt_llm", 64)]
    assert direct["server_us"] == 250.0 and direct["server_vs_direct"] == 1.0 and "stub" not in direct
    ens = by[("ensemble", 64)]
    assert ens["server_us"] == 350.0 and ens["server_vs_direct"] == pytest.approx(1.4)
    assert (ens["stub"], ens["stub_us"], ens["own_us"], ens["backend_us"]) == ("postprocessing", 50.0, 10.0, 40.0)
    assert ens["process_tokens_per_s"] == pytest.approx(20_000) and ens["own_tokens_per_s"] == pytest.approx(1e5)
    assert ens["aggregate_tokens_per_s"] == pytest.approx(20_000)  # one instance
    bls = by[("tensorrt_llm_bls", 64)]
    assert bls["instances"] == 2 and bls["aggregate_tokens_per_s"] == pytest.approx(2 * 1e6 / 80)
    lone = by[("tensorrt_llm_bls", 256)]  # nothing to compare with, nothing measured outside Triton: nan, not a crash
    assert lone["server_vs_direct"] != lone["server_vs_direct"] and lone["own_us"] != lone["own_us"]


def test_format_capacity_prints_the_split_and_the_capacity():
    own = {("postprocessing", 64): 10.0}
    rows = BENCH["capacity_rows"](CPU_ROWS, ["tensorrt_llm", "ensemble"], [64], own, {})
    direct, ens = (BENCH["format_capacity"](r) for r in rows)
    assert direct == "tensorrt_llm x64: server 250 us/token (1.00 x direct; tritonserver 150, engine stub 100)"
    assert ens.endswith("postprocessing stub 50 us/token = koserve's own 10.0 + python backend 40 -> one process "
                        "20,000 tok/s per core (koserve's own alone 100,000)")


def test_format_capacity_without_a_measurement_outside_triton_prints_no_split():
    rows = BENCH["capacity_rows"](CPU_ROWS, ["tensorrt_llm_bls"], [64], {}, {"tensorrt_llm_bls": 2})
    line = BENCH["format_capacity"](rows[0])
    assert "koserve's own" not in line and "nan" not in line
    assert line.endswith("tensorrt_llm_bls stub 80 us/token -> one process 12,500 tok/s per core, 2 instances 25,000")
