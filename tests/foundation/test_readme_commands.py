"""What README.md and docs/benchmarks.md show is what the real programs accept: koserve lines through koserve's own
argparse parser, make targets through `make -n`, benchmark commands through each script's own parser, scripts, test
paths and links by their presence, and README's client snippet by running it against a real server."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"


def fenced_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block, in order."""
    blocks: list[tuple[str, str]] = []
    lang, body = None, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "\n".join(body) + "\n"))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{path.name}: a code block is not closed"
    return blocks


def command_lines(path: Path) -> list[str]:
    lines: list[str] = []
    for lang, body in fenced_blocks(path):
        if lang not in ("", "bash", "sh"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _inline_commands(prefix: str) -> list[str]:
    return re.findall(rf"`({re.escape(prefix)}[^`]*)`", README.read_text(encoding="utf-8"))


KOSERVE_LINES = [line for line in command_lines(README) if line.startswith("koserve ")]
MAKE_LINES = ([line for path in (README, BENCHMARKS) for line in command_lines(path) if line.startswith("make ")]
              + _inline_commands("make "))
SCRIPT_LINES = [line for line in command_lines(BENCHMARKS) if line.startswith("python scripts/")]


def test_readme_shows_commands():
    assert len(KOSERVE_LINES) >= 6, KOSERVE_LINES
    assert {"make demo", "make test"} <= {" ".join(shlex.split(line, comments=True)[:2]) for line in MAKE_LINES}
    assert len(SCRIPT_LINES) >= 5, SCRIPT_LINES


@pytest.mark.parametrize("line", KOSERVE_LINES)
def test_koserve_commands_parse_with_the_real_cli(line, capsys):
    from koserve.cli import build_parser

    argv = shlex.split(line, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse prints the reason on stderr
        pytest.fail(f"koserve rejects the README's command (exit {exc.code}): {line}")
    assert getattr(args, "func", None) is not None, line
    assert "deprecated" not in capsys.readouterr().err, f"README uses a deprecated spelling: {line}"


@pytest.mark.parametrize("line", sorted(set(MAKE_LINES)))
def test_make_targets_exist(line):
    argv = [word for word in shlex.split(line, comments=True) if "=" not in word]
    result = subprocess.run([*argv, "-n"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{line}: {result.stderr}"


class _Parsed(Exception):
    """Raised by the patched parse_args once a script's own parser accepted its arguments."""


@pytest.mark.parametrize("line", SCRIPT_LINES)
def test_benchmark_commands_parse_with_the_scripts_own_parser(line, monkeypatch):
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    argv = shlex.split(line, comments=True)[1:]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    except _Parsed:
        return
    except SystemExit as exc:
        pytest.fail(f"{argv[0]} rejects the command in docs/benchmarks.md (exit {exc.code}): {line}")
    pytest.fail(f"{argv[0]} never parsed its arguments: {line}")


def test_scripts_named_in_readme_exist():
    text = README.read_text(encoding="utf-8")
    names = set(re.findall(r"\b(scripts/[\w./-]+\.(?:py|sh))", text))
    assert names, "README names no scripts"
    missing = sorted(name for name in names if not (ROOT / name).is_file())
    assert not missing, missing


def test_tests_named_in_readme_exist():
    """The guarantee table names the tests that pin each guarantee: they must exist as tests get refiled."""
    text = README.read_text(encoding="utf-8")
    names = set(re.findall(r"`(tests/[\w./-]+)`", text))
    assert len(names) >= 8, names
    missing = sorted(name for name in names if not (ROOT / name).exists())
    assert not missing, missing


def test_tests_pinning_triton_workarounds_exist():
    """docs/triton-versions.md names the test that pins each workaround (`tests/x.py` or `tests/x.py::test_name`, a
    trailing `*` matching a name prefix): each file and test function must exist."""
    text = (ROOT / "docs" / "triton-versions.md").read_text(encoding="utf-8")
    refs = re.findall(r"`(tests/[\w./-]+)(?:::([\w*]+))?`", text)
    assert len(refs) >= 15, refs
    missing = []
    for path, name in refs:
        target = ROOT / path
        if not target.exists():
            missing.append(path)
        elif name:
            pattern = "^def " + name.replace("*", r"\w*") + r"\b"
            if not re.search(pattern, target.read_text(encoding="utf-8"), flags=re.M):
                missing.append(f"{path}::{name}")
    assert not missing, missing


@pytest.mark.parametrize("path", [README, BENCHMARKS, ROOT / "DEVELOPERS.md", ROOT / "docs" / "triton-versions.md"],
                         ids=lambda p: p.name)
def test_relative_links_resolve(path):
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8"))
    local = [link for link in links if "://" not in link]
    missing = sorted(link for link in local if not (path.parent / link).exists())
    assert not missing, f"{path.name} links to missing files: {missing}"


def test_every_source_naming_triton_2_51_has_its_entry():
    """A module or model config that says "2.51" is working around (or citing) the test server's Triton: docs/
    triton-versions.md's table of such files must name it, so what to re-check on the production Triton is listed."""
    text = (ROOT / "docs" / "triton-versions.md").read_text(encoding="utf-8")
    table = text[text.index("## Where the source names Triton 2.51"):]
    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "model_repository").rglob("config.pbtxt")]
    naming = sorted(path.relative_to(ROOT).as_posix() for path in sources
                    if re.search(r"\b2\.51\b", path.read_text(encoding="utf-8")))
    assert naming, "the scan found no file naming 2.51"
    missing = [name for name in naming if f"`{name}`" not in table]
    assert not missing, f"name these in docs/triton-versions.md with their entry: {missing}"


def test_guides_stay_short():
    """README is a guide, docs/benchmarks.md the current figures: history goes to docs/decisions/."""
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150
    assert len(BENCHMARKS.read_text(encoding="utf-8").splitlines()) <= 200


def test_decision_index_lists_every_record_once():
    decisions = ROOT / "docs" / "decisions"
    linked = re.findall(r"\]\((20[\w.-]+\.md)\)", (decisions / "README.md").read_text(encoding="utf-8"))
    records = sorted(path.name for path in decisions.glob("20*.md"))
    assert sorted(linked) == records, (f"not in docs/decisions/README.md: {sorted(set(records) - set(linked))}; "
                                       f"listed twice: {sorted({n for n in linked if linked.count(n) > 1})}")


def readme_snippet() -> str:
    snippets = [body for lang, body in fenced_blocks(README) if lang == "python"]
    assert len(snippets) == 1, "README shows one Python snippet"
    assert len(snippets[0].strip().splitlines()) <= 6, snippets[0]
    return snippets[0]


@pytest.mark.server
def test_readme_client_snippet_streams_from_a_real_server(triton_servers, replay_text_file):
    """The snippet, run as written against a real tritonserver (its URL swapped for the test server's), prints the
    streamed answer: the same text a non-streamed call returns, the start of the replayed Korean text."""
    from koserve.client import ChatClient

    code = readme_snippet()
    assert '"127.0.0.1:8001"' in code and '"akallama-70b"' in code
    server = triton_servers("akallama-70b", "replay", replay_text_file=replay_text_file)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace('"127.0.0.1:8001"', repr(server.grpc_url)), "README.md", "exec"), {})
    printed = out.getvalue()
    with ChatClient(server.grpc_url, "akallama-70b", model="tensorrt_llm_bls") as client:
        whole = client.chat([{"role": "user", "content": "네 이름은 뭐야?"}], max_tokens=64).text
    assert printed == whole
    assert len(printed) > 10 and replay_text_file.read_text(encoding="utf-8").startswith(printed)
