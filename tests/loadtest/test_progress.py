"""Live progress: the record tail and the progress lines."""

from __future__ import annotations

import json

import pytest


def test_record_tail_reads_only_complete_new_lines(tmp_path, make_record):
    from koserve.loadtest.progress import RecordTail

    path = tmp_path / "records-1.jsonl"
    path.write_text(make_record(prompt_id="a").to_json() + "\n" + '{"protocol": "gr', encoding="utf-8")
    tail = RecordTail(tmp_path)
    assert [r.prompt_id for r in tail.new_records()] == ["a"]
    with open(path, "w", encoding="utf-8") as fh:  # the torn line completed, one more
        fh.write(make_record(prompt_id="a").to_json() + "\n" + make_record(prompt_id="b").to_json() + "\n")
    assert [r.prompt_id for r in tail.new_records()] == ["b"]
    assert tail.new_records() == []


def test_progress_lines_show_time_requests_rate_ttft_and_in_flight(tmp_path, make_record, fake_clock):
    import io

    from koserve.loadtest.progress import ProgressMonitor

    clock = fake_clock
    out = io.StringIO()
    mon = ProgressMonitor(tmp_path, 60.0, out, tty=False, interval=5.0, clock=clock)
    mon.poll(force=True)
    assert "starting locust" in out.getvalue()
    status = tmp_path / "status-1.json"
    status.write_text(json.dumps({"in_flight": 3, "chunks": 0}))
    mon.poll(force=True)
    clock.t += 4.0
    with open(tmp_path / "records-1.jsonl", "w", encoding="utf-8") as fh:
        for ttft in (0.05, 0.08, 0.2):
            fh.write(make_record(ttft=ttft, output_tokens=30, chunks=20).to_json() + "\n")
        fh.write(make_record(error="boom", ttft=None, itls=[]).to_json() + "\n")
        fh.write(make_record(warmup=True).to_json() + "\n")
    status.write_text(json.dumps({"in_flight": 3, "chunks": 200}))
    assert mon.poll() is None  # not yet 5 s since the last line
    clock.t += 1.0
    state = mon.poll()
    assert state is not None and (state.done, state.failed, state.warmup, state.in_flight) == (4, 1, 1, 3)
    assert state.ttft_p50_ms == pytest.approx(80.0)
    assert state.tokens_per_s == pytest.approx(200 * 1.5 / 5.0)  # chunks/s x tokens per chunk
    last = out.getvalue().strip().splitlines()[-1]
    assert last.startswith("loadtest: 5s/1m00s") and "done 4 (+1 warm-up)" in last and "failed 1" in last
    assert "in flight 3" in last and "60 output tok/s" in last and "TTFT p50 80 ms" in last

    tty = io.StringIO()
    bar = ProgressMonitor(tmp_path, 60.0, tty, tty=True, clock=clock)
    bar.poll(force=True)
    bar.close()
    assert tty.getvalue().startswith("\r\x1b[K[") and tty.getvalue().endswith("\n")
