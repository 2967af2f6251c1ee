"""The command line follows one convention (docs/cli.md), checked on koserve's real argparse parser: every flag has
help, defaults are shown, one subcommand metavar, one spelling per idea, and every renamed flag still parses as a
deprecated alias that says so in --help and on stderr."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from koserve.cli import build_parser
from koserve.cli.conventions import SUBCOMMAND_METAVAR, TIME, DeprecatedAlias, walk
from koserve.loadtest.durations import duration_arg

PARSER = build_parser()
PARSERS = {" ".join(words): p for words, p in walk(PARSER)}
COMMANDS = sorted(name for name, p in PARSERS.items() if p.get_default("func") is not None)


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and not isinstance(a, (argparse._HelpAction,
                                                                                   argparse._VersionAction))]


def _help(words: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*words, "--help"])
    assert exc.value.code == 0
    return out.getvalue()


def test_every_subcommand_is_walked():
    assert {"chat", "loadtest", "demo", "gateway", "serve", "repo render", "build run", "build new", "build gpus",
            "build list", "profiles", "gpu-smoke", "setup fixtures", "bench text"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_flag_has_help_and_shows_its_default(command):
    text = _help(command.split())
    parser = PARSERS[command]
    formatter = parser._get_formatter()
    for action in _options(parser):
        flag = "/".join(action.option_strings)
        assert action.help and action.help.strip(), f"koserve {command} {flag} has no help text"
        shown = formatter._get_help_string(action)
        default = action.default
        if default not in (None, False, "", argparse.SUPPRESS) and not isinstance(action, DeprecatedAlias):
            assert "default" in shown, f"koserve {command} {flag} does not show its default {default!r}"
        assert action.option_strings[-1] in text


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_one_subcommand_metavar(command):
    for action in PARSERS[command]._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert action.metavar == SUBCOMMAND_METAVAR, command


def test_time_flags_take_durations():
    for command, parser in PARSERS.items():
        for action in _options(parser):
            name = action.option_strings[-1]
            if isinstance(action, DeprecatedAlias):
                continue
            if name.endswith(("-timeout", "-grace", "-interval", "-window", "heartbeat", "-duration")) or \
                    name in ("--duration", "--warmup"):
                assert action.metavar == TIME and action.type is duration_arg, f"koserve {command} {name}"
    args = PARSER.parse_args(["serve", "--repo", "r", "--ready-timeout", "2m", "--probe-interval", "500ms"])
    assert (args.ready_timeout, args.probe_interval) == (120.0, 0.5)
    args = PARSER.parse_args(["chat", "x"])
    assert args.request_timeout == 120.0


def _flags(command: str) -> set[str]:
    return {s for a in _options(PARSERS[command]) if not isinstance(a, DeprecatedAlias) for s in a.option_strings}


@pytest.mark.parametrize("flags, commands", [
    ({"-p", "--profile"}, ["chat", "loadtest", "demo", "repo render"]),
    ({"--url"}, ["chat", "loadtest"]),
    ({"--target"}, ["chat", "loadtest", "demo"]),
    ({"--max-tokens"}, ["chat", "loadtest", "demo"]),
    ({"--request-timeout"}, ["chat", "loadtest", "gateway"]),
    ({"--ready-timeout"}, ["demo", "serve", "gpu-smoke"]),
])
def test_one_spelling_per_idea(flags, commands):
    for command in commands:
        assert flags <= _flags(command), command


def test_old_spellings_live_only_as_deprecated_aliases():
    for command in COMMANDS:
        current = _flags(command)
        assert "--timeout" not in current and "--osl-stddev" not in current, command
        if command != "gateway":  # there --model declares an OpenAI model name (docs/cli.md)
            assert "--model" not in current and "--models" not in current, command
        if command != "build plan":  # there --isl/--osl describe a traffic scenario, not a request
            assert "--osl" not in current, command


@pytest.mark.parametrize("argv, dest, value, new", [
    (["chat", "--model", "tensorrt_llm_bls", "hi"], "target", "tensorrt_llm_bls", "--target"),
    (["chat", "--timeout", "30", "hi"], "request_timeout", 30.0, "--request-timeout"),
    (["loadtest", "--model", "tensorrt_llm_bls"], "target", "tensorrt_llm_bls", "--target"),
    (["loadtest", "--osl", "64"], "max_tokens", 64, "--max-tokens"),
    (["loadtest", "--osl-stddev", "8"], "max_tokens_stddev", 8.0, "--max-tokens-stddev"),
    (["demo", "--models", "ensemble"], "targets", ["ensemble"], "--target"),
    (["gpu-smoke", "--loadtest-seconds", "12"], "loadtest_duration", 12.0, "--loadtest-duration"),
])
def test_deprecated_aliases_parse_warn_and_say_so_in_help(argv, dest, value, new, capsys):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert f"{argv[1]} is deprecated" in err and f"use {new}" in err
    help_text = " ".join(_help(argv[:1]).split())
    assert f"{argv[1]}" in help_text and f"deprecated alias of {new}" in help_text


def test_bad_duration_names_the_accepted_forms(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--request-timeout", "soon", "x"])
    assert "'soon' is not a duration: use seconds (90) or 90s, 2m, 1h, 1h30m, 500ms" in capsys.readouterr().err


CLI_MD = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_docs_cli_commands_parse_and_its_renamed_flags_are_the_parsers_aliases():
    import re
    import shlex

    text = CLI_MD.read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1)
    lines = [ln for ln in block.splitlines() if ln.startswith("koserve ")]
    assert len(lines) >= 5
    for line in lines:
        args = build_parser().parse_args(shlex.split(line, comments=True)[1:])
        assert args.func is not None, line
    table = text.split("### Renamed flags", 1)[1].split("###", 1)[0]
    documented = set()
    for row in re.findall(r"^\| `[\w-]+` \|.*$", table, flags=re.M):
        command, old = (cell.strip() for cell in row.strip("|").split("|")[:2])
        documented |= {(command.strip("`"), flag) for flag in re.findall(r"--[\w-]+", old)}
    aliases = {(name, s) for name, p in PARSERS.items() for a in p._actions if isinstance(a, DeprecatedAlias)
               for s in a.option_strings}
    assert documented - {("loadtest", "--url")} == aliases  # the positional URL is no flag
