"""StopStringMatcher against a reference (find in the whole text), on arbitrary splits into deltas."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from koserve.errors import InvalidRequestError
from koserve.text import IncrementalDetokenizer, StopStringMatcher
from koserve.text.stop_strings import MAX_STOP_CHARS, MAX_STOP_STRINGS

# A small alphabet makes partial and overlapping matches frequent.
ALPHABET = st.sampled_from(list("ab#\n 가녕") + ["😀"])
small_text = st.lists(ALPHABET, max_size=40).map("".join)
stop = st.lists(ALPHABET, min_size=1, max_size=4).map("".join)


def reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    """Cut at the occurrence that ends first (on a tie: starts first), found in the whole text."""
    best, matched = None, None
    for s in stops:
        at = text.find(s)
        if at != -1 and (best is None or (at + len(s), at) < best):
            best, matched = (at + len(s), at), s
    return (text, None) if best is None else (text[: best[1]], matched)


def split(text: str, cuts: list[int]) -> list[str]:
    pieces, i, k = [], 0, 0
    while i < len(text):
        size = cuts[k % len(cuts)]
        pieces.append(text[i : i + size])
        i, k = i + size, k + 1
    return pieces


def run(stops, deltas):
    matcher = StopStringMatcher(stops)
    outputs = [matcher.feed(d) for d in deltas] + [matcher.finish()]
    return matcher, outputs


@settings(max_examples=300, deadline=None)
@given(text=small_text, stops=st.lists(stop, min_size=0, max_size=4), cuts=st.lists(st.integers(0, 6), min_size=1,
                                                                                     max_size=6).filter(any))
def test_matches_reference(text, stops, cuts):
    matcher, outputs = run(stops, split(text, [c or 1 for c in cuts]) + [""])
    expected, matched = reference(text, stops)
    assert "".join(outputs) == expected
    assert matcher.stopped == (matched is not None)
    assert matcher.matched == matched


@settings(max_examples=300, deadline=None)
@given(text=small_text, stops=st.lists(stop, min_size=1, max_size=3), cuts=st.lists(st.integers(1, 5), min_size=1))
def test_releases_text_as_soon_as_it_is_safe(text, stops, cuts):
    """After each feed, what is still held back is a proper prefix of some stop string (or nothing)."""
    matcher = StopStringMatcher(stops)
    shown = ""
    seen = ""
    for delta in split(text, cuts):
        shown += matcher.feed(delta)
        seen += delta
        if matcher.stopped:
            break
        held = seen[len(shown) :]
        assert held == "" or any(s.startswith(held) and s != held for s in stops)


def test_stop_across_deltas_komt():
    matcher = StopStringMatcher(["###", "<|end|>"])
    assert matcher.feed("답변입니다.\n#") == "답변입니다.\n"
    assert matcher.feed("#") == ""
    assert matcher.feed("# Response: 더") == ""
    assert matcher.stopped and matcher.matched == "###"
    assert matcher.feed("more") == "" and matcher.finish() == ""


def test_false_alarm_is_released():
    matcher = StopStringMatcher(["<|end|>"])
    assert matcher.feed("a <|en") == "a "
    assert matcher.feed("try") == "<|entry"
    assert matcher.feed("<") == ""
    assert matcher.finish() == "<"
    assert not matcher.stopped and matcher.matched is None


def test_first_completed_match_wins_whatever_the_split():
    for deltas in (["xab", "cd"], ["xabcd"], list("xabcd")):
        matcher, outputs = run(["abcd", "bc"], deltas)
        assert "".join(outputs) == "xa" and matcher.matched == "bc"
    for deltas in (["a", "bb"], ["abb"], list("abb")):
        matcher, outputs = run(["b", "abb"], deltas)
        assert "".join(outputs) == "a" and matcher.matched == "b"
    matcher, outputs = run(["bb", "abb"], ["ab", "b"])  # both complete with the last "b": the longer one
    assert "".join(outputs) == "" and matcher.matched == "abb"


def test_no_stops_pass_through():
    matcher = StopStringMatcher([])
    assert matcher.feed("###") == "###"
    assert matcher.finish() == ""
    assert StopStringMatcher(None).feed("x") == "x"


def test_invalid_stops():
    with pytest.raises(InvalidRequestError, match="stop string #1 is empty"):
        StopStringMatcher(["a", ""])
    with pytest.raises(InvalidRequestError, match=f"limit is {MAX_STOP_CHARS}"):
        StopStringMatcher(["a" * (MAX_STOP_CHARS + 1)])
    with pytest.raises(InvalidRequestError, match=f"limit is {MAX_STOP_STRINGS}"):
        StopStringMatcher([str(i) for i in range(MAX_STOP_STRINGS + 1)])
    with pytest.raises(InvalidRequestError, match="must be a string"):
        StopStringMatcher([b"###"])


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_with_detokenizer(family, request):
    """Detokenizer deltas (whole characters) into the matcher: the Korean stop string is cut exactly."""
    tokenizer = request.getfixturevalue(family)
    text = "안녕하세요! 무엇을 도와드릴까요?\n사용자: 날씨 알려줘"
    detok = IncrementalDetokenizer(tokenizer)
    matcher = StopStringMatcher(["사용자:", "<|end|>"])
    shown = ""
    for token_id in tokenizer.encode(text, add_special_tokens=False):
        shown += matcher.feed(detok.add(token_id))
        if matcher.stopped:
            break
    shown += matcher.feed(detok.finish()) + matcher.finish()
    assert shown == "안녕하세요! 무엇을 도와드릴까요?\n"
    assert matcher.matched == "사용자:"
