"""koserve.eval without servers: the shipped Korean set, the comparisons and the gate's verdict."""

from __future__ import annotations

import json

import pytest

from koserve.errors import ConfigError
from koserve.eval.dataset import load_eval_set
from koserve.eval.metrics import (
    Answer,
    GateThresholds,
    chrf,
    compare_answers,
    first_divergence,
    format_report,
    judge,
)


def test_shipped_set_is_korean_with_references():
    items = load_eval_set()
    assert len(items) >= 16 and len({i.id for i in items}) == len(items)
    for item in items:
        hangul = sum("\uac00" <= ch <= "\ud7a3" for ch in item.prompt + item.reference)
        assert hangul >= 8, item.id
    assert any("🎉" in i.reference for i in items)  # a 4-byte character is in the set
    assert len(load_eval_set(limit=3)) == 3


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ('{"id": "a", "prompt": "안녕"}', '"reference" must be a non-empty string'),
    ('{"id": "a", "prompt": "", "reference": "x"}', '"prompt" must be a non-empty string'),
    ('{"id": "a", "prompt": "' + "가" * 9000 + '", "reference": "x"}', "limit 8000"),
])
def test_malformed_sets_are_refused_by_line(tmp_path, line, message):
    path = tmp_path / "set.jsonl"
    path.write_text('{"id": "ok", "prompt": "안녕", "reference": "안녕하세요"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=message) as exc:
        load_eval_set(path)
    assert f"{path}:2" in str(exc.value)


def test_repeated_ids_and_unknown_sets_are_refused(tmp_path):
    path = tmp_path / "set.jsonl"
    row = json.dumps({"id": "x", "prompt": "안녕", "reference": "네"}, ensure_ascii=False)
    path.write_text(row + "\n" + row + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="repeats"):
        load_eval_set(path)
    with pytest.raises(ConfigError, match="ko-quality-v1"):
        load_eval_set("no-such-set")


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence([], [7]) == 0


def test_chrf_is_one_for_identical_and_low_for_unrelated():
    ref = "대한민국의 수도는 서울입니다."
    assert chrf(ref, ref) == pytest.approx(1.0)
    assert chrf("서울이 수도입니다", ref) > chrf("고양이는 귀엽다", ref)
    assert chrf("", ref) == 0.0


def _answer(ids, lp=None, text="서울"):
    return Answer(text=text, token_ids=tuple(ids), log_probs=lp)


def test_gate_passes_identical_answers_and_fails_each_threshold_by_name():
    same = [compare_answers(f"i{n}", "서울", _answer([1, 2, 3], (-1.0, -1.0, -1.0)),
                            _answer([1, 2, 3], (-1.0, -1.0, -1.0))) for n in range(4)]
    report = judge(same, GateThresholds())
    assert report.ok and report.exact_match_rate == 1.0 and report.mean_first_divergence is None
    assert "verdict: PASS" in format_report(report, "b", "c")

    diverged = [compare_answers(f"i{n}", "서울은 수도", _answer([1, 2, 3], (-1.0,) * 3, "서울은 수도"),
                                _answer([1, 9, 9], (-2.0,) * 3, "고양이")) for n in range(4)]
    report = judge(diverged, GateThresholds())
    assert not report.ok and report.mean_first_divergence == 1.0
    text = "\n".join(report.failures)
    assert "exact-match rate 0.00 < 0.50" in text and "fell by 1.000 nats" in text and "reference chrF fell" in text
    table = format_report(report, "b", "c")
    assert "verdict: FAIL" in table and "FAIL: greedy exact-match rate" in table

    # Without log probabilities (an engine that returns none) the likelihood line says so and is not judged.
    nolp = [compare_answers("x", "서울", _answer([1]), _answer([1]))]
    report = judge(nolp, GateThresholds())
    assert report.ok and report.mean_log_probs() == (None, None)
    assert "not returned by the engine" in format_report(report, "b", "c")


def test_a_failed_request_fails_the_gate():
    item = compare_answers("x", "서울", _answer([1]), Answer("", (), None, error="UNAVAILABLE: no server"))
    report = judge([item], GateThresholds(min_exact_match_rate=0.0))
    assert not report.ok and "x: request failed: UNAVAILABLE" in report.failures[0]
