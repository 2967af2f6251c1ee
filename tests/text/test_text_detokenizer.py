"""IncrementalDetokenizer against the real tokenizers: deltas always concatenate to decode(all ids)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koserve.errors import InvalidRequestError
from koserve.text import IncrementalDetokenizer

FFFD = "\ufffd"
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Korean (common and rare syllables, jamo), emoji (ZWJ sequences, skin tones, flags), whitespace, ASCII.
TEXT_PIECES = st.one_of(
    st.sampled_from(list("안녕하세요반갑습니다뷁똠얗쀍햏괆ㄱㅏ한국어")),
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),
    st.sampled_from(["😀", "👍🏽", "🇰🇷", "👨‍👩‍👧", "❤️", "🤖"]),
    st.sampled_from([" ", "  ", "\n", "\n\n", "\t", "\u3000", "\u00a0"]),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
)
texts = st.lists(TEXT_PIECES, max_size=60).map("".join)


def random_ids(tokenizer):
    """Ids that stress the decoder: anything in the vocabulary, byte tokens, specials, pieces of Korean text."""
    n = tokenizer.vocab_size
    low = sorted(tokenizer.byte_fallback_ids) or list(range(256))  # Llama-3's first 256 ids are single bytes
    korean = tokenizer.encode("안녕하세요 뷁똠얗 반갑습니다 😀 👨‍👩‍👧", add_special_tokens=False)
    one = st.one_of(
        st.integers(0, n - 1),
        st.sampled_from(low),
        st.sampled_from(sorted(tokenizer.special_ids)),
        st.sampled_from(korean),
    )
    return st.lists(one, min_size=0, max_size=40)


def stream(tokenizer, ids, cuts, skip_special_tokens=True):
    """Feed ``ids`` in chunks of the sizes in ``cuts`` (cycled); returns the list of deltas incl. finish()."""
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip_special_tokens)
    deltas, i, k = [], 0, 0
    while i < len(ids):
        size = cuts[k % len(cuts)]
        deltas.append(detok.add(ids[i : i + size]))
        i, k = i + size, k + 1
    deltas.append(detok.finish())
    assert detok.text == "".join(deltas)
    return deltas


cut_sizes = st.lists(st.integers(1, 5), min_size=1, max_size=8)


@pytest.mark.parametrize("family", ["llama3", "llama2"])
@pytest.mark.parametrize("skip", [True, False])
def test_random_ids_concatenate_to_full_decode(family, skip, request):
    tokenizer = request.getfixturevalue(family)

    @SETTINGS
    @given(ids=random_ids(tokenizer), cuts=cut_sizes)
    def check(ids, cuts):
        deltas = stream(tokenizer, ids, cuts, skip)
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=skip)

    check()


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_text_streams_exactly_without_replacement_chars(family, request):
    tokenizer = request.getfixturevalue(family)

    @SETTINGS
    @given(text=texts, cuts=cut_sizes)
    def check(text, cuts):
        ids = tokenizer.encode(text, add_special_tokens=False)
        deltas = stream(tokenizer, ids, cuts)
        assert "".join(deltas) == tokenizer.decode(ids) == text
        assert not any(FFFD in d for d in deltas), deltas

    check()


def test_llama3_hangul_split_across_tokens(llama3):
    ids = llama3.encode("뷁 좋아요", add_special_tokens=False)
    assert ids[:2] == [111368, 223]  # 뷁 is two byte-level tokens, neither a whole character
    detok = IncrementalDetokenizer(llama3)
    assert detok.add(ids[0]) == ""
    assert detok.add(ids[1]) == "뷁"
    assert "".join(detok.add(i) for i in ids[2:]) + detok.finish() == " 좋아요"


def test_llama2_byte_fallback_hangul(llama2):
    ids = llama2.encode("안녕하세요", add_special_tokens=False)
    tokens = [llama2.id_to_token(i) for i in ids]
    assert tokens[:5] == ["▁", "안", "<0xEB>", "<0x85>", "<0x95>"]
    detok = IncrementalDetokenizer(llama2)
    deltas = [detok.add(i) for i in ids]
    assert deltas[:6] == ["", "안", "", "", "녕", "하"]  # 녕 as soon as its third byte arrives, never U+FFFD
    assert "".join(deltas) + detok.finish() == "안녕하세요"


def test_llama2_consecutive_byte_characters_stream_one_by_one(llama2):
    ids = llama2.encode("반갑", add_special_tokens=False)
    assert [llama2.id_to_token(i) for i in ids][1:] == ["<0xEB>", "<0xB0>", "<0x98>", "<0xEA>", "<0xB0>", "<0x91>"]
    assert stream(llama2, ids, [1]) == ["", "", "", "반", "", "", "갑", ""]


def test_unfinished_character_at_the_end(llama2, llama3):
    for tok, text in ((llama2, "안녕"), (llama3, "안뷁")):
        ids = tok.encode(text, add_special_tokens=False)[:-1]  # stop in the middle of the last character
        detok = IncrementalDetokenizer(tok)
        assert FFFD not in detok.add(ids)
        assert detok.text + detok.finish() == tok.decode(ids)
        assert tok.decode(ids).endswith(FFFD)


def test_llama2_invalid_byte_run_matches_decode(llama2):
    # tokenizers' ByteFallback would turn the whole invalid run into U+FFFD per byte (even the ASCII "f?" already
    # shown); TextTokenizer.decode and the stream replace only the invalid byte, as SentencePiece does.
    ids = [105, 66, 153, 15043]  # <0x66> <0x3F> <0x96> ▁Hello
    assert llama2.backend.decode(ids) == FFFD * 3 + " Hello"
    assert llama2.decode(ids) == "f?" + FFFD + " Hello"
    assert stream(llama2, ids, [1]) == ["f", "?", "", FFFD + " Hello", ""]
    # A skipped special token inside a run is invisible to the decoder: the character still completes.
    ids = [238, 2, 136, 152]  # <0xEB> </s> <0x85> <0x95>
    assert "".join(stream(llama2, ids, [1])) == llama2.decode(ids) == "녕"
    assert "".join(stream(llama2, ids, [1], skip_special_tokens=False)) == llama2.decode(ids, False)
    assert llama2.decode(ids, False) == FFFD + "</s>" + FFFD * 2


def test_decode_equals_tokenizers_decode_on_valid_text(llama2):
    ids = llama2.encode("안녕하세요, 반갑습니다 😀", add_special_tokens=True) + [2]
    assert llama2.decode(ids) == llama2.backend.decode(ids, skip_special_tokens=True)


def test_llama2_leading_spaces_kept(llama2):
    assert stream(llama2, [15043, 3186], [1]) == ["Hello", " world", ""]
    ids = llama2.encode("a  b\n c", add_special_tokens=False)
    assert "".join(stream(llama2, ids, [1])) == "a  b\n c"


def test_llama3_hello_world(llama3):
    assert stream(llama3, [9906, 1917], [1]) == ["Hello", " world", ""]


def test_special_tokens(llama3, llama2):
    ids = llama3.encode("네", add_special_tokens=False) + [128009]
    assert "".join(stream(llama3, ids, [1])) == "네"
    assert "".join(stream(llama3, ids, [1], skip_special_tokens=False)) == "네<|eot_id|>"
    ids = [1] + llama2.encode("네", add_special_tokens=False) + [2]
    assert "".join(stream(llama2, ids, [1])) == llama2.decode(ids)
    assert "".join(stream(llama2, ids, [1], skip_special_tokens=False)) == llama2.decode(ids, False)


def test_accepts_numpy_and_rejects_bad_ids(llama3):
    detok = IncrementalDetokenizer(llama3)
    assert detok.add(np.array([9906, 1917], dtype=np.int32)) == "Hello world"
    assert detok.add(np.int32(0)) == "!"
    assert detok.add(np.array([[0, 0]], dtype=np.int32)) == "!!"  # output_ids [1, n] as the engine sends them
    with pytest.raises(InvalidRequestError, match=r"outside the vocabulary \[0, 128256\)"):
        detok.add([128256])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        detok.add([1917, -1])  # nothing of the call is taken
    assert detok.add([1917]) == " world"
    assert detok.text == "Hello world!!! world"
    assert detok.finish() == ""
    with pytest.raises(RuntimeError, match="after finish"):
        detok.add(1)


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_decode_window_stays_small(family, request):
    """Constant cost per token: the stream only ever decodes the ids since its last output, however long the text
    (timings are in scripts/bench_text.py; this checks the structure behind them)."""
    tokenizer = request.getfixturevalue(family)
    ids = tokenizer.encode("안녕하세요, 반갑습니다! 뷁똠얗 😀\n" * 300, add_special_tokens=False)
    assert len(ids) > 4000
    detok = IncrementalDetokenizer(tokenizer)
    largest = 0
    for token_id in ids:
        detok.add(token_id)
        largest = max(largest, len(detok._window) + len(detok._pending))
    assert largest <= 8
    assert detok.text + detok.finish() == tokenizer.decode(ids)
