"""Token ids in, text deltas out: streaming detokenization at a constant cost per token.

Built on ``tokenizers.decoders.DecodeStream``, which decodes a small window of recent ids and holds back text that
ends in an incomplete UTF-8 character (U+FFFD). What we add:

- **Byte-fallback runs (Llama-2).** Hangul missing from Llama-2's vocabulary is written as ``<0xNN>`` byte tokens
  (녕 = ``<0xEB><0x85><0x95>``). We pass the bytes of a run through an incremental UTF-8 decoder and give the stream
  each character's byte tokens as soon as the character is complete, so Korean streams character by character.
  Invalid bytes become U+FFFD on their own, as in SentencePiece — ``tokenizers``' ``ByteFallback`` would instead
  turn a whole invalid run into U+FFFD retroactively, including characters already shown; :meth:`TextTokenizer.decode
  <koserve.text.tokenizer.TextTokenizer.decode>` uses the same per-character rule, so the guarantee below holds.
- **The end.** Text still pending (an incomplete character, a trailing U+FFFD) is flushed by
  :meth:`IncrementalDetokenizer.finish`.

Guarantee: the concatenation of all deltas (``finish()`` included) equals ``tokenizer.decode(all ids)`` for every
sequence; a delta never contains U+FFFD for a character that is merely incomplete so far.

With ``skip_special_tokens=True`` (the default) special tokens (``<|eot_id|>``, ``<s>``, ``</s>`` …) produce no
text, as in ``decode(ids, skip_special_tokens=True)``; with ``False`` they appear as their literal content.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable

from tokenizers.decoders import DecodeStream

from koserve.errors import InvalidRequestError
from koserve.text.tokenizer import TextTokenizer

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


class IncrementalDetokenizer:
    """Feed ids with :meth:`add` (one or many at a time); each call returns the new text (whole characters only)."""

    __slots__ = (
        "_tokenizer", "_backend", "_stream", "_byte_values", "_byte_tokens", "_skipped", "_vocab_size", "_skip",
        "_utf8", "_run_open", "_window", "_pending", "_parts", "_text", "_finished",
    )

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._backend = tokenizer.backend
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._byte_values = tokenizer.byte_values
        self._byte_tokens = tokenizer.byte_token_ids
        # Skipped specials never reach the decoder: with byte fallback we leave them out of the stream entirely.
        self._skipped = tokenizer.special_ids if skip_special_tokens else frozenset()
        self._vocab_size = tokenizer.vocab_size
        self._utf8 = _Utf8Decoder("replace")
        self._run_open = False  # the UTF-8 decoder holds the first bytes of an unfinished character
        self._window: list[int] = []  # ids of the stream's last emitting step: its decode prefix
        self._pending: list[int] = []  # ids given to the stream since it last emitted text
        self._parts: list[str] = []
        self._text: str | None = ""
        self._finished = False

    @property
    def text(self) -> str:
        """All text produced so far."""
        if self._text is None:
            self._text = "".join(self._parts)
            self._parts = [self._text]
        return self._text

    def add(self, ids: int | Iterable[int]) -> str:
        """Add generated ids (an int, a sequence or a numpy array) and return the text they complete."""
        if self._finished:
            raise RuntimeError("IncrementalDetokenizer.add() after finish()")
        if hasattr(ids, "ravel"):  # numpy: any shape, e.g. output_ids [1, n]
            if ids.size == 1 and not self._byte_values:  # the streamed case (Llama-3): one id, no lists
                return self._add_one(ids.item())
            ids = ids.ravel().tolist()
        elif isinstance(ids, int):
            ids = (ids,)
        else:
            ids = [i if type(i) is int else int(i) for i in ids]
        if len(ids) == 1 and not self._byte_values:
            return self._add_one(ids[0])
        vocab_size = self._vocab_size
        for token_id in ids:  # all checked first: a bad id leaves the stream untouched
            if not 0 <= token_id < vocab_size:
                raise InvalidRequestError(f"token id {token_id} is outside the vocabulary [0, {vocab_size})")
        out = []
        byte_values = self._byte_values
        for token_id in ids:
            if byte_values:
                if token_id in self._skipped:
                    continue
                value = byte_values.get(token_id)
                if value is not None:
                    chars = self._utf8.decode(bytes((value,)))
                    self._run_open = bool(self._utf8.getstate()[0])
                    if chars:
                        piece = self._step([self._byte_tokens[b] for b in chars.encode("utf-8")])
                        if piece:
                            out.append(piece)
                    continue
                if self._run_open:  # the run ends with an unfinished character: U+FFFD, as decode() gives
                    chunk = self._close_run()
                    chunk.append(token_id)
                    piece = self._step(chunk)
                    if piece:
                        out.append(piece)
                    continue
            piece = self._stream.step(self._backend, token_id)
            self._pending.append(token_id)
            if piece is not None:
                self._window = self._pending
                self._pending = []
                if piece:
                    out.append(piece)
        if not out:
            return ""
        delta = out[0] if len(out) == 1 else "".join(out)
        self._parts.append(delta)
        self._text = None
        return delta

    def _add_one(self, token_id: int) -> str:
        """:meth:`add` of one id without byte fallback (Llama-3): the streamed case, one step, no lists."""
        if not 0 <= token_id < self._vocab_size:
            raise InvalidRequestError(f"token id {token_id} is outside the vocabulary [0, {self._vocab_size})")
        piece = self._stream.step(self._backend, token_id)
        self._pending.append(token_id)
        if piece is None:
            return ""
        self._window = self._pending
        self._pending = []
        if piece:
            self._parts.append(piece)
            self._text = None
        return piece

    def _close_run(self) -> list[int]:
        chars = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._run_open = False
        return [self._byte_tokens[b] for b in chars.encode("utf-8")]

    def _step(self, chunk: list[int]) -> str | None:
        piece = self._stream.step(self._backend, chunk)
        self._pending.extend(chunk)
        if piece is not None:
            self._window = self._pending
            self._pending = []
        return piece

    def finish(self) -> str:
        """Flush text still held back (an incomplete character at the end becomes U+FFFD, as in ``decode``)."""
        if self._finished:
            return ""
        self._finished = True
        rest = self._pending
        if self._run_open:
            rest = rest + self._close_run()
        self._pending = []
        if not rest:
            return ""
        decode = self._backend.decode
        prefix = decode(self._window, skip_special_tokens=self._skip)
        full = decode(self._window + rest, skip_special_tokens=self._skip)
        # The stream keeps the prefix stable; the fallback keeps the output going if it ever is not.
        tail = full[len(prefix):] if full.startswith(prefix) else full
        if tail:
            self._parts.append(tail)
            self._text = None
        return tail
