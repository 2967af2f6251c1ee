"""`koserve loadtest` on the real argparse parser: registration, durations, help."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cli_registers_loadtest():
    from koserve.cli import build_parser

    args = build_parser().parse_args(["loadtest", "--url", "127.0.0.1:8001", "--shape", "step", "--slo", "ttft_p99=2s"])
    assert args.command == "loadtest" and args.shape == "step" and callable(args.func)
    assert Path(__file__).parents[2].joinpath("examples", "locustfile.py").is_file()


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

    args = build_parser().parse_args(["loadtest", "--url", "h:1", "--duration", "2m", "--warmup", "10s",
                                      "--step-duration", "30", "--request-timeout", "1m"])
    assert (args.duration, args.warmup, args.step_duration, args.request_timeout) == (120.0, 10.0, 30.0, 60.0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["loadtest", "--url", "h:1", "--duration", "ten"])
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


def test_the_server_is_url_like_in_chat_and_the_positional_form_still_works(capsys, monkeypatch):
    from koserve.cli import build_parser
    from koserve.cli.loadtest import server_url
    from koserve.errors import ConfigError

    monkeypatch.delenv("KOSERVE_URL", raising=False)
    parse = build_parser().parse_args
    assert server_url(parse(["loadtest", "--url", "127.0.0.1:9001"])) == "127.0.0.1:9001"
    assert server_url(parse(["loadtest"])) == "127.0.0.1:8001"  # chat's default too
    assert server_url(parse(["loadtest", "--protocol", "http"])) == "http://127.0.0.1:8000"
    assert server_url(parse(["loadtest", "--protocol", "openai"])) == "http://127.0.0.1:8080"
    monkeypatch.setenv("KOSERVE_URL", "127.0.0.1:7001")
    assert server_url(parse(["loadtest"])) == "127.0.0.1:7001"
    capsys.readouterr()
    assert server_url(parse(["loadtest", "127.0.0.1:9002"])) == "127.0.0.1:9002"
    assert "use --url 127.0.0.1:9002" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="two servers given"):
        server_url(parse(["loadtest", "127.0.0.1:9002", "--url", "127.0.0.1:9003"]))
