"""Every command README.md shows is one the real programs accept: koserve lines through koserve's own argparse
parser, make targets through `make -n`, scripts by their presence."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _command_lines() -> list[str]:
    lines: list[str] = []
    for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _inline_commands(prefix: str) -> list[str]:
    return re.findall(rf"`({re.escape(prefix)}[^`]*)`", README.read_text(encoding="utf-8"))


KOSERVE_LINES = [line for line in _command_lines() if line.startswith("koserve ")]
MAKE_LINES = [line for line in _command_lines() if line.startswith("make ")] + _inline_commands("make ")


def test_readme_shows_commands():
    assert len(KOSERVE_LINES) >= 6, KOSERVE_LINES
    assert {"make demo", "make test"} <= {shlex.split(line, comments=True)[0] + " " + shlex.split(line, comments=True)[1]
                                          for line in MAKE_LINES}


@pytest.mark.parametrize("line", KOSERVE_LINES)
def test_koserve_commands_parse_with_the_real_cli(line):
    from koserve.cli import build_parser

    argv = shlex.split(line, comments=True)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse prints the reason on stderr
        pytest.fail(f"koserve rejects the README's command (exit {exc.code}): {line}")
    assert getattr(args, "func", None) is not None, line


@pytest.mark.parametrize("line", sorted(set(MAKE_LINES)))
def test_make_targets_exist(line):
    argv = [word for word in shlex.split(line, comments=True) if "=" not in word]
    result = subprocess.run([*argv, "-n"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{line}: {result.stderr}"


def test_scripts_named_in_readme_exist():
    text = README.read_text(encoding="utf-8")
    names = set(re.findall(r"\b(scripts/[\w./-]+\.(?:py|sh))", text))
    assert names, "README names no scripts"
    missing = sorted(name for name in names if not (ROOT / name).is_file())
    assert not missing, missing
