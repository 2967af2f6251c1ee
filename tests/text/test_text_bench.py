"""The text benchmark runs (tiny sizes) through both entry points and prints a well-formed table."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from koserve.cli import main as koserve_main
from koserve.text.bench import korean_ids

REPO = Path(__file__).resolve().parents[2]


def test_korean_ids_have_the_requested_length(llama2):
    ids = korean_ids(llama2, 300)
    assert len(ids) == 300
    assert "니다" in llama2.decode(ids)


def test_cli_prints_table(capsys):
    assert koserve_main(["bench", "text", "--family", "llama2", "--lengths", "16,32", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| tokenizer | output tokens |")
    assert [line.split("|")[1:3] for line in lines[2:]] == [[" llama2 ", " 16 "], [" llama2 ", " 32 "]]
    for line in lines[2:]:
        detok = float(line.split("|")[4].split()[0])
        assert 0 < detok < 10_000


def test_script_entry_point(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_text.py", "--family", "llama3", "--lengths", "8", "--repeats", "1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts" / "bench_text.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert "| llama3 | 8 |" in capsys.readouterr().out
