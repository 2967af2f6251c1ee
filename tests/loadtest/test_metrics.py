"""Per-request measurement: the stream timer (TTFT, chunk gaps, E2E, TPOT), locust events, records."""

from __future__ import annotations

import json

import pytest

from koserve.loadtest.metrics import EVENT_NAMES, RecordWriter, StreamTimer, fire_locust_events, read_records
from koserve.loadtest.report import summarize


def test_stream_timer_measures_ttft_itl_e2e_and_ignores_empty_chunks(fake_clock):
    clock = fake_clock
    timer = StreamTimer(protocol="grpc", model="ensemble", prompt_id="p", input_chars=5, input_tokens=3,
                        max_tokens=8, concurrency=2, clock=clock)
    clock.t += 0.150
    timer.chunk("안녕")
    clock.t += 0.020
    timer.chunk("")  # a partial character: no token on the wire yet
    clock.t += 0.010
    timer.chunk("하세요")
    clock.t += 0.030
    timer.chunk("!")
    clock.t += 0.005
    record = timer.finish(count_tokens=lambda text: len(text))
    assert record.ok
    assert record.ttft == pytest.approx(0.150)
    assert record.itls == pytest.approx([0.030, 0.030])
    assert record.e2e == pytest.approx(0.215)
    assert record.chunks == 3
    assert record.output_tokens == len("안녕하세요!")
    assert record.tokens_per_s == pytest.approx(6 / 0.215)
    assert record.concurrency == 2


def test_stream_timer_without_output_is_a_failure_and_keeps_the_server_message():
    timer = StreamTimer(protocol="http", model="m", prompt_id="p", input_chars=1, input_tokens=None, max_tokens=4)
    assert timer.finish().error == "stream finished without any output text"
    timer = StreamTimer(protocol="http", model="m", prompt_id="p", input_chars=1, input_tokens=None, max_tokens=4)
    timer.chunk("a")
    record = timer.finish(error="HTTP 400: max_tokens 99999 exceeds the limit 2047")
    assert not record.ok and "exceeds the limit" in record.error and record.tokens_per_s is None


def test_locust_events_are_separate_per_measure(make_record):
    events = []
    fire_locust_events(lambda **kw: events.append(kw), make_record())
    names = [e["name"] for e in events]
    assert names == ["ttft", "tpot", "chunk_gap", "chunk_gap", "chunk_gap", "e2e", "output_tokens",
                     "output_tokens_per_s"]
    assert set(names) == set(EVENT_NAMES)
    assert all(e["exception"] is None and e["request_type"] == "grpc" for e in events)
    by = {e["name"]: e["response_time"] for e in events}
    assert by["ttft"] == pytest.approx(100.0) and by["e2e"] == pytest.approx(1000.0)
    assert by["tpot"] == pytest.approx((1000.0 - 100.0) / 3)
    assert by["output_tokens"] == 4 and by["output_tokens_per_s"] == pytest.approx(4.0)

    events.clear()
    fire_locust_events(lambda **kw: events.append(kw), make_record(error="model 'x' is not found", ttft=None, itls=[]))
    assert len(events) == 1 and events[0]["name"] == "e2e"
    assert "is not found" in str(events[0]["exception"])

    events.clear()
    fire_locust_events(lambda **kw: events.append(kw), make_record(warmup=True))
    assert events == []  # warm-up requests stay out of locust's tables too


def test_tpot_is_per_request_e2e_minus_ttft_over_tokens_minus_one(make_record):
    # 41 tokens in 21 chunks: Korean characters of two tokens arrive as one chunk, 40 ms apart at 20 ms per token
    r = make_record(ttft=0.1, e2e=0.1 + 40 * 0.02, output_tokens=41, chunks=21, itls=[0.04] * 20)
    assert r.tpot == pytest.approx(0.02)
    s = summarize([r])
    assert s["tpot_ms"]["p50"] == pytest.approx(20.0) and s["chunk_gap_ms"]["p50"] == pytest.approx(40.0)
    assert s["itl_ms"] == s["chunk_gap_ms"]  # the old key keeps its meaning
    assert "(E2E - TTFT) / (output tokens - 1)" in s["definitions"]["tpot"]
    assert make_record(output_tokens=1, itls=[]).tpot is None  # one token: no time per output token
    assert make_record(error="boom").tpot is None
    assert json.loads(make_record().to_json())["tpot"] == pytest.approx(0.3)


def test_records_round_trip_and_torn_lines_are_skipped(tmp_path, make_record):
    writer = RecordWriter(tmp_path)
    writer.write(make_record(prompt_id="한국어-1"))
    writer.write(make_record(prompt_id="b", start=999.0))
    writer.close()
    with open(writer.path, "a", encoding="utf-8") as fh:
        fh.write('{"protocol": "grpc", "mod')  # a process killed mid-write
    records = read_records([writer.path])
    assert [r.prompt_id for r in records] == ["b", "한국어-1"]  # sorted by start
    assert records[1].itls == pytest.approx([0.02, 0.03, 0.02])


def test_server_token_count_follows_num_output_tokens():
    from koserve.loadtest.metrics import ServerTokenCount

    ensemble = ServerTokenCount()
    for _ in range(5):
        ensemble.add(None)  # no count from the server: the tokenizer counts, as before
    assert ensemble.total is None
    bls = ServerTokenCount()
    for value in (None, [4], 3, None, 0):  # one token, a response of four, of three, one, the last text alone
        bls.add(value)
    assert bls.total == 9
