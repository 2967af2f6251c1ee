"""The CPU stand-in exports TensorRT-LLM's own metric families on Triton's metrics port (issue 30 item 3): names,
label keys and values as in NVIDIA's backend source (tests/fleet/data/trtllm_metrics.json), values from its
scheduler. Scraped from the real server."""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from koserve.cpu_engine.metrics import FAMILIES, EngineStats, kv_blocks, metric_values
from koserve.server.drain import parse_engine_load
from koserve.server.triton_calls import grpc_stream, text_inputs

FACTS = json.loads((Path(__file__).parent / "data" / "trtllm_metrics.json").read_text(encoding="utf-8"))
BATCH = 2


def scrape(url: str) -> dict[str, dict[str, float]]:
    """family -> category label value -> value (model tensorrt_llm only), checking the common labels."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in FACTS["families"]:
            continue
        key = FACTS["families"][family.name]["category_label"]
        for sample in family.samples:
            assert set(sample.labels) == {"model", "version", key}, sample
            assert sample.labels["model"] == "tensorrt_llm" and sample.labels["version"] == "1", sample
            out.setdefault(family.name, {})[sample.labels[key]] = sample.value
    return out


def test_families_match_nvidias_source():
    assert set(FAMILIES) == set(FACTS["families"])
    for name, (description, key, values) in FAMILIES.items():
        fact = FACTS["families"][name]
        assert (description, key, list(values)) == (fact["description"], fact["category_label"], fact["values"])


def test_kv_blocks_count_what_the_sequences_hold():
    stats = EngineStats(active=2, max_requests=4, context=1, waiting=3, active_tokens=(65, 10), context_tokens=10,
                        iterations=7, max_seq_len=512)
    kv = kv_blocks(stats, tokens_per_block=64)
    assert kv["max"] == 4 * 8 and kv["used"] == 2 + 1 and kv["free"] == 32 - 3
    assert math.isclose(kv["fraction"], 3 / 32) and kv["tokens_per"] == 64
    values = metric_values(stats)
    # NVIDIA's formulas: waiting = active - scheduled
    assert values["nv_trt_llm_request_metrics"] == {"active": 5, "max": 4, "scheduled": 2, "context": 1, "waiting": 3}
    assert values["nv_trt_llm_inflight_batcher_metrics"]["generation_requests"] == 1
    assert values["nv_trt_llm_general_metrics"]["iteration_counter"] == 7


@pytest.mark.server
def test_metrics_port_shows_the_schedulers_requests_and_blocks(triton_servers):
    server = triton_servers("akallama-70b", "replay", replay_delay_ms=20, max_batch_size=BATCH)
    idle = scrape(server.metrics_url)
    for name, fact in FACTS["families"].items():
        assert sorted(idle[name]) == sorted(fact["values"]), name
    assert idle["nv_trt_llm_request_metrics"]["max"] == BATCH
    assert idle["nv_trt_llm_request_metrics"]["active"] == 0
    assert idle["nv_trt_llm_kv_cache_block_metrics"]["used"] == 0

    streams = 2 * BATCH  # half of them must wait: the engine admits max_batch_size at a time
    results = [None] * streams

    def run(i: int) -> None:
        results[i] = grpc_stream(server.grpc_url, "ensemble", text_inputs("안녕하세요", 80), timeout=60)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    busy = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen = scrape(server.metrics_url)
        req = seen["nv_trt_llm_request_metrics"]
        if req["scheduled"] == BATCH and req["waiting"] == streams - BATCH:
            busy = seen
            break
        time.sleep(0.05)
    for t in threads:
        t.join(90)
    assert busy is not None, "never saw a full batch with requests waiting"
    req, kv = busy["nv_trt_llm_request_metrics"], busy["nv_trt_llm_kv_cache_block_metrics"]
    assert req["active"] == streams and req["waiting"] == req["active"] - req["scheduled"]  # NVIDIA's formula
    assert kv["used"] >= BATCH and kv["free"] == kv["max"] - kv["used"]
    assert math.isclose(kv["fraction"], kv["used"] / kv["max"], rel_tol=1e-6)
    assert all(r is not None and r.error is None for r in results), [r.error for r in results if r]
    done = scrape(server.metrics_url)  # refreshed every 0.25 s
    deadline = time.monotonic() + 5
    while done["nv_trt_llm_request_metrics"]["active"] and time.monotonic() < deadline:
        time.sleep(0.1)
        done = scrape(server.metrics_url)
    assert done["nv_trt_llm_request_metrics"]["active"] == 0 and done["nv_trt_llm_request_metrics"]["waiting"] == 0
    assert done["nv_trt_llm_general_metrics"]["iteration_counter"] > idle["nv_trt_llm_general_metrics"][
        "iteration_counter"]
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        load = parse_engine_load(resp.read().decode())
    assert load is not None and load.idle  # what koserve serve's drain reads
