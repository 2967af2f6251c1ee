"""Load-test building blocks without a server: shapes, timers, prompts, summary, SLOs, locust command line."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest

from koserve.errors import ConfigError
from koserve.loadtest.metrics import (
    EVENT_NAMES,
    RecordWriter,
    StreamRecord,
    StreamTimer,
    fire_locust_events,
    read_records,
)
from koserve.loadtest.options import OPTIONS, to_locust_flags
from koserve.loadtest.prompts import (
    LENGTHS,
    TASKS,
    ChatPromptSource,
    LengthSampler,
    SyntheticPromptSource,
    corpus_text,
    load_prompt_set,
)
from koserve.loadtest.report import (
    check_slos,
    parse_slos,
    percentile,
    prometheus_delta,
    render_markdown,
    summarize,
    write_report,
)
from koserve.loadtest.runner import LoadTestConfig, locust_command
from koserve.loadtest.shapes import FixedConcurrency, PoissonArrivals, PoissonRate, StepRamp, build_shape


# -- shapes ----------------------------------------------------------------------------------------------------

def test_fixed_concurrency_holds_then_stops():
    shape = FixedConcurrency(users=8, duration=30)
    assert shape.tick(0) == (8, 8.0)
    assert shape.tick(29.9) == (8, 8.0)
    assert shape.tick(30) is None


def test_step_ramp_adds_users_per_step_up_to_the_ceiling():
    shape = StepRamp(start=2, step=3, step_duration=10, max_users=9, duration=60)
    assert [shape.tick(t)[0] for t in (0, 9.9, 10, 20, 30, 59)] == [2, 2, 5, 8, 9, 9]
    assert shape.tick(60) is None


def test_poisson_shape_keeps_the_in_flight_cap():
    shape = PoissonRate(rate=5, max_concurrency=16, duration=10)
    assert shape.tick(3) == (16, 16.0)
    assert shape.tick(10) is None


def test_poisson_arrivals_are_seeded_and_have_the_requested_rate():
    now = [0.0]
    arrivals = PoissonArrivals(rate=4.0, seed=7, clock=lambda: now[0])
    delays = [arrivals.next_delay() for _ in range(4000)]  # clock stands still: delay = arrival time
    gaps = [b - a for a, b in zip(delays, delays[1:])]
    assert delays[0] == 0.0
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.06)
    # exponential gaps: standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(0.25, rel=0.1)
    again = PoissonArrivals(rate=4.0, seed=7, clock=lambda: 0.0)
    assert [again.next_delay() for _ in range(50)] == delays[:50]
    # a late caller gets 0, never a negative delay
    now[0] = 10_000.0
    assert arrivals.next_delay() == 0.0


@pytest.mark.parametrize(
    "kind,kwargs,msg",
    [
        ("fixed", dict(concurrency=0), "users must be > 0"),
        ("step", dict(concurrency=4, max_users=2), "max_users"),
        ("poisson", dict(request_rate=0), "rate must be > 0"),
        ("burst", {}, "fixed, step, poisson"),
    ],
)
def test_bad_shapes_name_the_problem(kind, kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        build_shape(kind, duration=10, **kwargs)


# -- timing ----------------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_stream_timer_measures_ttft_itl_e2e_and_ignores_empty_chunks():
    clock = FakeClock()
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


def _record(**kw) -> StreamRecord:
    base = dict(protocol="grpc", model="ensemble", prompt_id="p", start=1000.0, end=1001.0, input_chars=10,
                input_tokens=5, max_tokens=4, ttft=0.1, itls=[0.02, 0.03, 0.02], e2e=1.0, chunks=4,
                output_tokens=4, output_chars=8, concurrency=1)
    base.update(kw)
    return StreamRecord(**base)


def test_locust_events_are_separate_per_measure():
    events = []
    fire_locust_events(lambda **kw: events.append(kw), _record())
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
    fire_locust_events(lambda **kw: events.append(kw), _record(error="model 'x' is not found", ttft=None, itls=[]))
    assert len(events) == 1 and events[0]["name"] == "e2e"
    assert "is not found" in str(events[0]["exception"])

    events.clear()
    fire_locust_events(lambda **kw: events.append(kw), _record(warmup=True))
    assert events == []  # warm-up requests stay out of locust's tables too


def test_tpot_is_per_request_e2e_minus_ttft_over_tokens_minus_one():
    # 41 tokens in 21 chunks: Korean characters of two tokens arrive as one chunk, 40 ms apart at 20 ms per token
    r = _record(ttft=0.1, e2e=0.1 + 40 * 0.02, output_tokens=41, chunks=21, itls=[0.04] * 20)
    assert r.tpot == pytest.approx(0.02)
    s = summarize([r])
    assert s["tpot_ms"]["p50"] == pytest.approx(20.0) and s["chunk_gap_ms"]["p50"] == pytest.approx(40.0)
    assert s["itl_ms"] == s["chunk_gap_ms"]  # the old key keeps its meaning
    assert "(E2E - TTFT) / (output tokens - 1)" in s["definitions"]["tpot"]
    assert _record(output_tokens=1, itls=[]).tpot is None  # one token: no time per output token
    assert _record(error="boom").tpot is None
    assert json.loads(_record().to_json())["tpot"] == pytest.approx(0.3)


def test_records_round_trip_and_torn_lines_are_skipped(tmp_path):
    writer = RecordWriter(tmp_path)
    writer.write(_record(prompt_id="한국어-1"))
    writer.write(_record(prompt_id="b", start=999.0))
    writer.close()
    with open(writer.path, "a", encoding="utf-8") as fh:
        fh.write('{"protocol": "grpc", "mod')  # a process killed mid-write
    records = read_records([writer.path])
    assert [r.prompt_id for r in records] == ["b", "한국어-1"]  # sorted by start
    assert records[1].itls == pytest.approx([0.02, 0.03, 0.02])


# -- prompts ---------------------------------------------------------------------------------------------------

def test_prompt_sets_cover_every_task_at_every_length():
    for length in LENGTHS:
        prompts = load_prompt_set(length)
        assert {p.task for p in prompts} == set(TASKS), length
        assert len({p.id for p in prompts}) == len(prompts)
        for p in prompts:
            text = p.messages[-1]["content"]
            assert sum("가" <= ch <= "힣" for ch in text) >= 8, p.id  # Korean prompts
    assert len(load_prompt_set("all")) == sum(len(load_prompt_set(n)) for n in LENGTHS)


def test_prompt_lengths_grow_from_short_to_long(token_counter):
    count = token_counter("akallama-70b")
    means = [statistics.mean(count(p.messages[-1]["content"]) for p in load_prompt_set(n)) for n in LENGTHS]
    assert means[0] < 40 < means[1] < 150 < means[2]


def test_unknown_prompt_set_lists_the_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="short, all"):
        load_prompt_set("nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    with pytest.raises(ConfigError, match="role 'user'"):
        load_prompt_set(str(bad))


def test_chat_source_renders_with_the_profile_template_and_is_seeded():
    from koserve.chat import render_prompt
    from koserve.profiles import load_profile

    profile = load_profile("komt-13b")
    prompts = load_prompt_set("short")

    def source(seed):
        return ChatPromptSource(prompts, render=lambda m: render_prompt(profile, m), seed=seed,
                                osl=LengthSampler(32, rng=random.Random(seed)))

    def order(seed):
        src = source(seed)
        return [src.next().prompt_id for _ in range(len(prompts))]

    assert sorted(order(1)) == sorted(p.id for p in prompts)  # one pass visits every prompt once
    assert order(1) == order(1) and order(1) != order(2)
    first = source(1).next()
    assert first.text.startswith("### instruction: ") and first.text.endswith("### Response:")
    assert first.max_tokens == 32


def test_synthetic_prompts_have_the_target_input_length(token_counter):
    counter = token_counter("akallama-70b")
    corpus = corpus_text(load_prompt_set("all"))

    def source(seed, stddev=0.0):
        rng = random.Random(seed)
        return SyntheticPromptSource(corpus, isl=LengthSampler(200, stddev, rng=rng),
                                     osl=LengthSampler(64, 16, rng=rng), seed=seed, counter=counter)

    fixed = source(3)
    reqs = [fixed.next() for _ in range(20)]
    # decoding a window of 200 ids and encoding it again gives 200 ids (±2 where a cut splits a character)
    assert all(abs(r.input_tokens - 200) <= 2 for r in reqs), [r.input_tokens for r in reqs]
    assert statistics.mean(r.input_tokens for r in reqs) == pytest.approx(200, abs=1)
    assert len({r.text for r in reqs}) == 20
    osl = [r.max_tokens for r in reqs]
    assert 40 < statistics.mean(osl) < 90 and statistics.pstdev(osl) > 5
    assert source(3).next().text == reqs[0].text  # seeded: the same text again
    normal = source(5, stddev=50)
    lengths = [normal.next().input_tokens for _ in range(60)]
    assert 150 < statistics.mean(lengths) < 250 and statistics.pstdev(lengths) > 20


def test_length_sampler_is_clipped_and_validated():
    rng = random.Random(0)
    sampler = LengthSampler(10, 100, cap=50, rng=rng)
    values = [sampler.sample() for _ in range(500)]
    assert min(values) >= 1 and max(values) <= 50
    with pytest.raises(ConfigError, match=">= 1"):
        LengthSampler(0, rng=rng)


# -- summary, SLOs, report -------------------------------------------------------------------------------------

def test_percentile_matches_linear_interpolation():
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(list(range(101)), 99) == pytest.approx(99.0)


def test_warmup_records_are_counted_but_left_out_of_every_figure():
    records = [_record(start=0.0, end=5.0, ttft=3.0, e2e=5.0, warmup=True),
               _record(start=1.0, end=2.0, ttft=0.1, e2e=1.0), _record(start=1.5, end=2.5, ttft=0.3, e2e=1.0)]
    s = summarize(records)
    assert s["warmup_requests"] == 1 and s["requests"] == 2 and s["succeeded"] == 2
    assert s["ttft_ms"]["max"] == pytest.approx(300.0) and s["duration_s"] == pytest.approx(1.5)


def test_prompt_tokens_are_what_the_model_received(token_counter):
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
    s = summarize([_record(prompt_tokens=300, prompt_tokens_source="server"), _record(prompt_tokens=310)])
    assert s["prompt_tokens_per_request"]["mean"] == pytest.approx(305.0)
    assert s["input_tokens_per_request"]["mean"] == pytest.approx(5.0)


def test_summary_counts_failures_and_computes_rates():
    records = [
        _record(start=0.0, end=1.0, output_tokens=10, itls=[0.01] * 9, e2e=1.0),
        _record(start=0.5, end=2.0, output_tokens=20, itls=[0.02] * 19, e2e=1.5, ttft=0.3),
        _record(start=1.0, end=1.1, error="connection refused", ttft=None, itls=[], chunks=0, output_tokens=0),
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


def test_slos_parse_units_and_detect_misses():
    slos = parse_slos("ttft_p99=2s, itl_p99=100ms, e2e_p50=1500us, error_rate=1%, output_tokens_per_s=10")
    assert [(s.metric, s.limit) for s in slos] == [
        ("ttft_p99", 2000.0), ("itl_p99", 100.0), ("e2e_p50", 1.5), ("error_rate", 0.01), ("output_tokens_per_s", 10.0)
    ]
    summary = summarize([_record(), _record(start=1000.5, end=1001.5)])
    results = {r["metric"]: r["passed"] for r in check_slos(slos, summary)}
    assert results == {"ttft_p99": True, "itl_p99": True, "e2e_p50": False, "error_rate": True,
                       "output_tokens_per_s": False}
    # no measurement (every request failed) is a miss, not a pass
    failed = summarize([_record(error="boom", ttft=None, itls=[])])
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


def test_report_folder_has_summary_and_plots(tmp_path):
    records = [_record(start=1000.0 + i * 0.3, end=1001.0 + i * 0.3, concurrency=1 + i % 3) for i in range(30)]
    records.append(_record(start=1005.0, end=1005.2, error="stopped", ttft=None, itls=[]))
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


# -- command line ----------------------------------------------------------------------------------------------

def test_every_locust_option_round_trips_to_flags():
    flags = to_locust_flags({o.dest: o.default for o in OPTIONS})
    assert len(flags) == 2 * len(OPTIONS)
    with pytest.raises(KeyError):
        to_locust_flags({"users": 3})  # locust's own options are not ours to set


def test_locust_command_is_bounded_and_targets_only_the_given_url(tmp_path):
    cfg = LoadTestConfig(url="grpc://127.0.0.1:8001", out_dir=tmp_path, protocol="grpc", duration=20,
                         max_requests=50, request_timeout=10, processes=2, request_rate=8, shape="poisson")
    cfg.validate()
    cmd = locust_command(cfg, tmp_path / "records")
    assert cmd[-1] == "TritonGrpcUser" and "--headless" in cmd
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1:8001"
    assert [c for c in cmd if "://" in c] == []  # no other target anywhere on the command line
    assert cmd[cmd.index("--max-requests") + 1] == "25"  # split across the 2 processes
    assert cmd[cmd.index("--request-rate") + 1] == "4.0"
    assert cmd[cmd.index("--shape-duration") + 1] == "20"
    assert cfg.hard_timeout() == 60.0
    assert cfg.resolved_metrics_url() == "http://127.0.0.1:8002/metrics"
    http = LoadTestConfig(url="http://127.0.0.1:9000", out_dir=tmp_path, protocol="openai")
    assert locust_command(http, tmp_path)[-1] == "OpenAIChatUser"
    assert http.resolved_metrics_url() == "http://127.0.0.1:9000/metrics"
    with pytest.raises(ConfigError, match="max_requests"):
        LoadTestConfig(url="x", out_dir=tmp_path, max_requests=0).validate()
    with pytest.raises(ConfigError, match="protocol"):
        LoadTestConfig(url="x", out_dir=tmp_path, protocol="websocket").validate()


def test_cli_registers_loadtest():
    from koserve.cli import build_parser

    args = build_parser().parse_args(["loadtest", "127.0.0.1:8001", "--shape", "step", "--slo", "ttft_p99=2s"])
    assert args.command == "loadtest" and args.shape == "step" and callable(args.func)
    assert Path(__file__).parents[2].joinpath("loadtest", "locustfile.py").is_file()


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


# -- durations, help, progress, end of run, plots --------------------------------------------------------------

@pytest.mark.parametrize("text,seconds", [("90", 90.0), ("90s", 90.0), ("2m", 120.0), ("1h", 3600.0),
                                          ("1h30m", 5400.0), ("0.5s", 0.5), (" 2M ", 120.0), ("1m30s", 90.0)])
def test_durations_read_like_locust_run_time(text, seconds):
    from koserve.loadtest.durations import parse_duration

    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "2 minutes", "m", "5d", "1h-3m", "s90"])
def test_bad_durations_name_the_accepted_forms(text):
    from koserve.loadtest.durations import parse_duration

    with pytest.raises(ValueError, match="90s, 2m, 1h"):
        parse_duration(text)


def test_cli_durations_warmup_and_bad_duration(capsys):
    from koserve.cli import build_parser

    args = build_parser().parse_args(["loadtest", "h:1", "--duration", "2m", "--warmup", "10s",
                                      "--step-duration", "30", "--request-timeout", "1m"])
    assert (args.duration, args.warmup, args.step_duration, args.request_timeout) == (120.0, 10.0, 30.0, 60.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadtest", "h:1", "--duration", "ten"])
    assert "'ten' is not a duration" in capsys.readouterr().err


def _loadtest_parser():
    import argparse

    from koserve.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["loadtest"]


def test_every_loadtest_flag_has_help_and_no_default_is_shown_twice():
    import re

    parser = _loadtest_parser()
    for action in parser._actions:
        assert action.help and action.help.strip(), action.option_strings or action.dest
    text = parser.format_help()
    flat = " ".join(text.split())
    assert not re.search(r"\(default: [^)]*\)\s*\(default:", flat), flat
    for block in re.split(r"\n  (?=-)", text):  # one block per option
        assert len(re.findall(r"default", block)) <= 1, block
    assert "(default: 60s)" in flat and "90s, 2m, 1h" in flat


def test_record_tail_reads_only_complete_new_lines(tmp_path):
    from koserve.loadtest.progress import RecordTail

    path = tmp_path / "records-1.jsonl"
    path.write_text(_record(prompt_id="a").to_json() + "\n" + '{"protocol": "gr', encoding="utf-8")
    tail = RecordTail(tmp_path)
    assert [r.prompt_id for r in tail.new_records()] == ["a"]
    with open(path, "w", encoding="utf-8") as fh:  # the torn line completed, one more
        fh.write(_record(prompt_id="a").to_json() + "\n" + _record(prompt_id="b").to_json() + "\n")
    assert [r.prompt_id for r in tail.new_records()] == ["b"]
    assert tail.new_records() == []


def test_progress_lines_show_time_requests_rate_ttft_and_in_flight(tmp_path):
    import io

    from koserve.loadtest.progress import ProgressMonitor

    clock = FakeClock()
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
            fh.write(_record(ttft=ttft, output_tokens=30, chunks=20).to_json() + "\n")
        fh.write(_record(error="boom", ttft=None, itls=[]).to_json() + "\n")
        fh.write(_record(warmup=True).to_json() + "\n")
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


def test_the_report_says_why_the_run_ended(tmp_path):
    from koserve.loadtest.runner import end_of_run

    cfg = LoadTestConfig(url="h:1", out_dir=tmp_path, duration=60, warmup=10, max_requests=40)
    kw = dict(returncode=0, killed=False, interrupted=False, statuses=[{}], elapsed=71.0)
    reason, text = end_of_run(cfg, **kw)
    assert reason == "duration" and "1m10s" in text and "10s warm-up" in text
    assert end_of_run(cfg, **{**kw, "statuses": [{"stop_reason": "max_requests"}]})[0] == "max_requests"
    assert end_of_run(cfg, **{**kw, "returncode": 1})[1].startswith("error: locust exited with code 1")
    assert end_of_run(cfg, **{**kw, "killed": True})[0] == "time_limit"
    assert end_of_run(cfg, **{**kw, "interrupted": True})[0] == "interrupted"


def test_locust_command_runs_warmup_plus_duration_and_echo_keeps_the_periodic_stats(tmp_path):
    cfg = LoadTestConfig(url="127.0.0.1:8001", out_dir=tmp_path, duration=20, warmup=5, warmup_requests=3,
                         processes=2)
    cmd = locust_command(cfg, tmp_path / "records")
    assert cmd[cmd.index("--shape-duration") + 1] == "25"
    assert cmd[cmd.index("--warmup-seconds") + 1] == "5"
    assert cmd[cmd.index("--warmup-requests") + 1] == "2"  # per process
    assert "--only-summary" in cmd and "--only-summary" not in locust_command(cfg, tmp_path, echo=True)
    assert cfg.hard_timeout() == 25 + 60 + 30


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
