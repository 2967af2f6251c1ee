"""Stop words and bad words as TensorRT-LLM's ``stop_words_list`` / ``bad_words_list`` tensors.

Format (as NVIDIA's ``inflight_batcher_llm`` preprocessing produces it): INT32 ``[2, N]`` per request — row 0 the
token ids of all entries concatenated, row 1 the cumulative end offset of each entry; row 0 is padded with 0 and
row 1 with -1. A batch is ``[B, 2, N]`` (:func:`batch_word_lists`). No entries at all gives ``[2, 0]``.

The engine matches token ids, but one string has several tokenizations: ``###`` is ``###`` at the start of a line
and ``Ġ###`` after a space for Llama-3; ``▁###`` at the start of the output or after a space and ``##`` ``#``
mid-text for Llama-2; Llama-3 writes ``<|end|>`` followed by a newline as ``<`` ``|`` ``end`` ``|`` ``>Ċ``. Each
word is therefore tokenized between each pair of :data:`LEFT_CONTEXTS` and :data:`RIGHT_CONTEXTS`; every distinct
sequence of tokens overlapping the word becomes its own entry, the context-free one first (what NVIDIA's
preprocessing sends), minus entries that end with another entry (the shorter one fires first). Every entry's text
contains the word, so stopping on it is always right. A word that is a special token (``<s>`` for Llama-2,
``<|eot_id|>`` for Llama-3) is that token's id. Other surroundings can merge differently; the text-level
:class:`koserve.text.StopStringMatcher` is the backstop for those.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from koserve.errors import InvalidRequestError
from koserve.text.tokenizer import TextTokenizer

#: Text a word is tokenized after (start of text, newline, space, Latin letter, Hangul syllable, punctuation) ...
LEFT_CONTEXTS: tuple[str, ...] = ("", "\n", " ", "a", "가", ".")
#: ... and before (end of text, newline(s), space, letter, Hangul): Llama-3 glues a newline to punctuation (``>Ċ``).
RIGHT_CONTEXTS: tuple[str, ...] = ("", "\n", "\n\n", " ", "a", "가")
MAX_WORDS = 32
MAX_WORD_CHARS = 128


def _as_text(word: str | bytes, index: int, kind: str) -> str:
    if isinstance(word, bytes):
        try:
            word = word.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequestError(f"{kind} #{index} is not valid UTF-8: {exc}") from None
    if not isinstance(word, str):
        raise InvalidRequestError(f"{kind} #{index} must be a string, got {type(word).__name__}")
    if not word:
        raise InvalidRequestError(f"{kind} #{index} is empty")
    if len(word) > MAX_WORD_CHARS:
        raise InvalidRequestError(f"{kind} #{index} has {len(word)} characters; the limit is {MAX_WORD_CHARS}")
    return word


def word_variants(tokenizer: TextTokenizer, word: str) -> list[list[int]]:
    """Every distinct token sequence covering ``word`` between a left and a right context (context-free first)."""
    return [list(ids) for ids in _cached_variants(tokenizer, word)]


@lru_cache(maxsize=1024)
def _cached_variants(tokenizer: TextTokenizer, word: str) -> tuple[tuple[int, ...], ...]:
    variants: dict[tuple[int, ...], None] = {}
    encode = tokenizer.backend.encode
    for left in LEFT_CONTEXTS:
        start, end = len(left), len(left) + len(word)
        for right in RIGHT_CONTEXTS:
            encoding = encode(left + word + right, add_special_tokens=False)
            # Tokens overlapping the word; one that also covers context characters (``Ġ###``, ``>Ċ``) counts.
            ids = tuple(i for i, (a, b) in zip(encoding.ids, encoding.offsets) if a < end and b > start)
            if ids:
                variants.setdefault(ids)
    return tuple(variants)


def _word_entries(
    tokenizer: TextTokenizer, words: Iterable[str | bytes] | str | bytes | None, kind: str
) -> list[list[int]]:
    if words is None:
        return []
    if isinstance(words, (str, bytes)):
        words = [words]
    words = list(words)
    if len(words) > MAX_WORDS:
        raise InvalidRequestError(f"{len(words)} {kind}s given; the limit is {MAX_WORDS}")
    found: dict[tuple[int, ...], None] = {}
    for index, raw in enumerate(words):
        word = _as_text(raw, index, kind)
        variants = _cached_variants(tokenizer, word)
        if not variants:
            raise InvalidRequestError(f"{kind} #{index} {word!r} tokenizes to no tokens")
        for ids in variants:
            found.setdefault(ids)
    return _drop_redundant(list(found))


def _drop_redundant(entries: list[tuple[int, ...]]) -> list[list[int]]:
    """Drop an entry when another one is a suffix of it: the engine matches the end of the output, so the shorter
    entry already fires whenever the longer one would."""
    present = set(entries)
    return [list(ids) for ids in entries if not any(ids[k:] in present for k in range(1, len(ids)))]


def to_word_list(entries: Sequence[Sequence[int]]) -> np.ndarray:
    """Token-id sequences → INT32 ``[2, N]`` (concatenated ids; cumulative ends, padded with 0 / -1)."""
    flat: list[int] = []
    ends: list[int] = []
    for ids in entries:
        if len(ids) == 0:
            raise InvalidRequestError("a word-list entry has no tokens")
        flat.extend(int(i) for i in ids)
        ends.append(len(flat))
    out = np.zeros((2, len(flat)), dtype=np.int32)
    out[0, :] = flat
    out[1, :] = -1
    out[1, : len(ends)] = ends
    return out


def stop_words_list(
    tokenizer: TextTokenizer, words: Iterable[str | bytes] | None, *, end_ids: Iterable[int] = ()
) -> np.ndarray:
    """TensorRT-LLM ``stop_words_list`` ``[2, N]`` for ``words`` (every tokenization of each, see module doc).

    ``end_ids``: token ids that end generation besides the engine's single ``end_id`` (Llama-3 instruct ends a turn
    with ``<|eot_id|>`` 128009 but a document with ``<|end_of_text|>`` 128001); each becomes a one-token entry.
    Raises :class:`InvalidRequestError` for an empty word, one that tokenizes to nothing, or too many/long words.
    """
    entries = _word_entries(tokenizer, words, "stop word")
    vocab_size = tokenizer.vocab_size
    for token_id in end_ids:
        token_id = int(token_id)
        if not 0 <= token_id < vocab_size:
            raise InvalidRequestError(f"end id {token_id} is outside the vocabulary [0, {vocab_size})")
        if [token_id] not in entries:
            entries.append([token_id])
    return to_word_list(entries)


def bad_words_list(tokenizer: TextTokenizer, words: Iterable[str | bytes] | None) -> np.ndarray:
    """TensorRT-LLM ``bad_words_list`` ``[2, N]``: every tokenization of each word is banned."""
    return to_word_list(_word_entries(tokenizer, words, "bad word"))


def parse_word_list(array, name: str = "word list") -> list[list[int]]:
    """Inverse of :func:`to_word_list`: ``[2, N]`` (or ``[1, 2, N]``) → token-id sequences. Validates the layout.

    Offsets padded with -1 end the list, so an all-padding list (``[[0], [-1]]``) means "no words".
    """
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise InvalidRequestError(f"{name} must have shape [2, N] (or [1, 2, N]), got {list(np.shape(array))}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidRequestError(f"{name} must hold integers, got dtype {arr.dtype}")
    ids, ends = arr[0].tolist(), arr[1].tolist()
    entries: list[list[int]] = []
    previous = 0
    for end in ends:
        if end < 0:
            break
        if not previous < end <= len(ids):
            raise InvalidRequestError(f"{name} offsets must increase within [1, {len(ids)}], got {ends}")
        entries.append(ids[previous:end])
        previous = end
    return entries


def batch_word_lists(lists: Sequence[np.ndarray]) -> np.ndarray:
    """Stack per-request ``[2, n_i]`` word lists into INT32 ``[B, 2, max n_i]`` (padding 0 / -1)."""
    width = 0
    for i, arr in enumerate(lists):
        if np.ndim(arr) != 2 or np.shape(arr)[0] != 2:
            raise InvalidRequestError(f"word list #{i} must have shape [2, N], got {list(np.shape(arr))}")
        width = max(width, np.shape(arr)[1])
    out = np.zeros((len(lists), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for i, arr in enumerate(lists):
        n = np.shape(arr)[1]
        out[i, :, :n] = arr
    return out
