"""stop_words_list / bad_words_list / batch_word_lists against the real tokenizers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from koserve.errors import InvalidRequestError
from koserve.profiles import load_profile
from koserve.text import (
    bad_words_list,
    batch_word_lists,
    parse_word_list,
    stop_words_list,
    to_word_list,
    word_variants,
)
from koserve.text.stop_words import LEFT_CONTEXTS, MAX_WORD_CHARS, MAX_WORDS, RIGHT_CONTEXTS

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORD_PIECES = st.one_of(
    st.sampled_from(list("#:<>|/ .\n가나다라안녕끝") + ["###", "<|end|>", "</s>", "User", "사용자"]),
    st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),
)
words = st.lists(WORD_PIECES, min_size=1, max_size=6).map("".join)


def tokens(tokenizer, entries):
    return [[tokenizer.id_to_token(i) for i in ids] for ids in entries]


def test_hash_variants_llama3(llama3):
    # Start of text / line / after a letter: "###"; after a space: "Ġ###"; before a newline "###Ċ", "###ĊĊ".
    assert tokens(llama3, word_variants(llama3, "###")) == [["###"], ["###Ċ"], ["###ĊĊ"], ["Ġ###"], ["Ġ###Ċ"]]
    assert word_variants(llama3, "###")[0] == [14711]
    assert [llama3.id_to_token(i) for i in llama3.encode("답:\n### Response", add_special_tokens=False)][1:3] == [
        ":Ċ", "###"
    ]


def test_hash_variants_llama2(llama2):
    # Start of output or after a space: "▁###"; mid-text and after a newline: "##" "#".
    assert tokens(llama2, word_variants(llama2, "###")) == [["▁###"], ["##", "#"]]


def test_komt_profile_stop_words(llama2):
    profile = load_profile("komt-13b")
    array = stop_words_list(llama2, profile.generation.stop_words, end_ids=profile.generation.end_ids[1:])
    assert array.dtype == np.int32 and array.shape[0] == 2
    entries = parse_word_list(array)
    assert tokens(llama2, entries) == [
        ["▁<", "|", "end", "|", ">"],
        ["<", "|", "end", "|", ">"],  # <|end|> is plain text for Llama-2
        ["<s>"],  # <s> is the special BOS token, id 1
        ["▁###"],
        ["##", "#"],
    ]
    assert [1] in entries


def test_akallama_end_ids(llama3):
    profile = load_profile("akallama-70b")
    array = stop_words_list(llama3, profile.generation.stop_words, end_ids=profile.generation.end_ids)
    assert array.tolist() == [[128009, 128001], [1, 2]]
    assert stop_words_list(llama3, [], end_ids=[]).shape == (2, 0)
    # <|eot_id|> given as a word is the special token, and the same entry is not repeated.
    assert parse_word_list(stop_words_list(llama3, ["<|eot_id|>"], end_ids=[128009, 128001])) == [[128009], [128001]]


def test_layout_and_padding(llama2):
    array = stop_words_list(llama2, ["###", "<s>"])
    # ▁### (1 id), ## # (2 ids), <s> (1 id): ids concatenated; ends 1, 3, 4; row 1 padded with -1.
    assert array.tolist() == [[835, 2277, 29937, 1], [1, 3, 4, -1]]
    assert stop_words_list(llama2, []).shape == (2, 0)
    assert stop_words_list(llama2, None).shape == (2, 0)
    assert parse_word_list(stop_words_list(llama2, "###")) == [[835], [2277, 29937]]  # one str is one word


def test_batch(llama3, llama2):
    a = stop_words_list(llama2, ["###"])
    b = stop_words_list(llama2, [])
    c = bad_words_list(llama2, ["<|end|>"])
    batch = batch_word_lists([a, b, c])
    assert batch.dtype == np.int32 and batch.shape == (3, 2, 10)
    assert batch[1].tolist() == [[0] * 10, [-1] * 10]
    assert batch[0].tolist() == [[835, 2277, 29937] + [0] * 7, [1, 3] + [-1] * 8]
    for arr, row in zip((a, b, c), batch):
        assert parse_word_list(row) == parse_word_list(arr)
    assert batch_word_lists([b, b]).shape == (2, 2, 0)
    with pytest.raises(InvalidRequestError, match="shape"):
        batch_word_lists([np.zeros((3, 1), np.int32)])


def test_bad_input(llama2, llama3):
    with pytest.raises(InvalidRequestError, match="stop word #1 is empty"):
        stop_words_list(llama2, ["###", ""])
    with pytest.raises(InvalidRequestError, match="bad word #0 is empty"):
        bad_words_list(llama3, [b""])
    with pytest.raises(InvalidRequestError, match="not valid UTF-8"):
        stop_words_list(llama3, [b"\xea\xb0"])
    with pytest.raises(InvalidRequestError, match=f"limit is {MAX_WORD_CHARS}"):
        stop_words_list(llama3, ["가" * (MAX_WORD_CHARS + 1)])
    with pytest.raises(InvalidRequestError, match=f"limit is {MAX_WORDS}"):
        stop_words_list(llama3, ["a"] * (MAX_WORDS + 1))
    with pytest.raises(InvalidRequestError, match="must be a string"):
        stop_words_list(llama3, [3])
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        stop_words_list(llama2, [], end_ids=[32000])
    with pytest.raises(InvalidRequestError, match="offsets"):
        parse_word_list(np.array([[5, 6], [3, -1]]))
    with pytest.raises(InvalidRequestError, match="no tokens"):
        to_word_list([[]])


def test_bytes_words_accepted(llama3):
    assert stop_words_list(llama3, ["###".encode()]).tolist() == stop_words_list(llama3, ["###"]).tolist()


def test_llama3_end_tag_before_newline(llama3):
    # "<|end|>\n" glues ">" and the newline into one token: an entry must still end the output there.
    entries = parse_word_list(stop_words_list(llama3, ["<|end|>"]))
    ids = llama3.encode("좋아요 <|end|>\n", add_special_tokens=False)
    assert any(ids[len(ids) - len(e) :] == e for e in entries)
    assert llama3.id_to_token(ids[-1]) == ">Ċ"


def test_redundant_entries_dropped(llama3, llama2):
    # Every tokenization of "a###" ends with a tokenization of "###": the engine would stop on "###" first anyway.
    for tok in (llama3, llama2):
        assert stop_words_list(tok, ["###", "a###"]).tolist() == stop_words_list(tok, ["###"]).tolist()


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_variants_property(family, request):
    """The context-free tokenization comes first (NVIDIA-compatible); every variant's text contains the word; the
    word's tokens between any two contexts end with an entry; entries are distinct and none ends with another."""
    tokenizer = request.getfixturevalue(family)

    @SETTINGS
    @given(ws=st.lists(words, min_size=1, max_size=4))
    def check(ws):
        array = stop_words_list(tokenizer, ws)
        entries = parse_word_list(array)
        assert array.dtype == np.int32 and array.shape == (2, sum(len(e) for e in entries))
        for a in entries:
            assert sum(_ends_with(a, b) for b in entries) == 1  # only itself
        for word in ws:
            variants = word_variants(tokenizer, word)
            assert variants[0] == tokenizer.encode(word, add_special_tokens=False)
            for ids in variants:
                assert any(_ends_with(ids, e) for e in entries)
                if not any(tokenizer.id_to_token(i) in word for i in tokenizer.special_ids):
                    # (Llama-2's legacy normalizer puts a "▁" after a special token, so "</s>#" has a space.)
                    assert word in _decode_mid_text(tokenizer, ids)
            for left in LEFT_CONTEXTS:
                for right in RIGHT_CONTEXTS:
                    full = tokenizer.encode(left + word + right, add_special_tokens=False)
                    assert any(_contains(full, ids) for ids in variants), (left, word, right)

    check()


def _decode_mid_text(tokenizer, ids):
    """Text of ``ids`` after other text (Llama-2's decoder strips one leading space at the very start)."""
    before = tokenizer.encode("a", add_special_tokens=False)
    return tokenizer.decode(before + ids, skip_special_tokens=False)[len(tokenizer.decode(before)) :]


def _ends_with(seq, tail):
    return len(tail) <= len(seq) and seq[len(seq) - len(tail) :] == tail


@pytest.mark.parametrize("family", ["llama3", "llama2"])
def test_word_found_in_longer_text(family, request):
    """In realistic surroundings (a sentence, then a newline or a space) the generated ids contain an entry."""
    tokenizer = request.getfixturevalue(family)
    entries = parse_word_list(stop_words_list(tokenizer, ["###", "<|end|>", "사용자:"]))
    for text in ("답변입니다.\n### Response:", "답변입니다. ### 끝", "끝<|end|>", "좋아요 <|end|>\n", "\n사용자: 안녕"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert any(_contains(ids, e) for e in entries), text


def _contains(seq, sub):
    return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))
