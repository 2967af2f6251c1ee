"""Token ids in, text deltas out: streaming detokenization at a constant cost per token.

Built on ``tokenizers.decoders.DecodeStream``, which decodes a small window of recent ids and holds back text that
ends in an incomplete UTF-8 character (U+FFFD). Two things it does not do on its own, handled here:

- **Byte-fallback runs (Llama-2).** The ``ByteFallback`` decoder turns a run of consecutive ``<0xNN>`` tokens into
  text all at once, and if the whole run is not valid UTF-8 it writes one U+FFFD *per byte token* — including for
  bytes that were already a complete character (``f`` ``?`` ``<0x96>`` decodes to three U+FFFD, not ``f?\ufffd``).
  Text from an open run is therefore never final: we keep the run back and hand it to the stream together with the
  token that closes it. Korean on Llama-2 arrives a few characters later (when the run ends), never wrong.
  Skipped special tokens inside a run do not close it (the decoder never sees them).
- **The end.** Ids whose text is still pending (an unfinished character, an open run) are flushed by
  :meth:`IncrementalDetokenizer.finish`, so the concatenation of all deltas is always ``decode(all ids)``.

With ``skip_special_tokens=True`` (the default) special tokens (``<|eot_id|>``, ``<s>``, ``</s>`` …) produce no
text, as in ``decode(ids, skip_special_tokens=True)``; with ``False`` they appear as their literal content.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers.decoders import DecodeStream

from koserve.errors import InvalidRequestError
from koserve.text.tokenizer import TextTokenizer


class IncrementalDetokenizer:
    """Feed ids with :meth:`add` (one or many at a time); each call returns the new text (whole characters only)."""

    __slots__ = (
        "_backend", "_stream", "_byte_ids", "_transparent", "_vocab_size", "_skip",
        "_held", "_window", "_pending", "_parts", "_text", "_finished",
    )

    def __init__(self, tokenizer: TextTokenizer, skip_special_tokens: bool = True):
        self._backend = tokenizer.backend
        self._skip = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._byte_ids = tokenizer.byte_fallback_ids
        self._transparent = tokenizer.special_ids if skip_special_tokens else frozenset()
        self._vocab_size = tokenizer.vocab_size
        self._held: list[int] = []  # an open byte-fallback run, not yet given to the stream
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
        """Add generated ids (an int, a sequence or a 1-D numpy array) and return the text they complete."""
        if self._finished:
            raise RuntimeError("IncrementalDetokenizer.add() after finish()")
        if isinstance(ids, int):
            ids = (ids,)
        elif hasattr(ids, "tolist"):
            ids = ids.tolist()
            if isinstance(ids, int):
                ids = (ids,)
        out = []
        vocab_size = self._vocab_size
        byte_ids = self._byte_ids
        for token_id in ids:
            if type(token_id) is not int:
                token_id = int(token_id)
            if not 0 <= token_id < vocab_size:
                raise InvalidRequestError(f"token id {token_id} is outside the vocabulary [0, {vocab_size})")
            if byte_ids:
                if token_id in byte_ids or (self._held and token_id in self._transparent):
                    self._held.append(token_id)
                    continue
                if self._held:
                    chunk = self._held
                    chunk.append(token_id)
                    self._held = []
                    piece = self._step(chunk)
                    if piece:
                        out.append(piece)
                    continue
            piece = self._stream.step(self._backend, token_id)
            if piece is None:
                self._pending.append(token_id)
            else:
                self._pending.append(token_id)
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

    def _step(self, chunk: list[int]) -> str | None:
        piece = self._stream.step(self._backend, chunk)
        self._pending.extend(chunk)
        if piece is not None:
            self._window = self._pending
            self._pending = []
        return piece

    def finish(self) -> str:
        """Flush text still held back (an incomplete character or byte run at the end; U+FFFD if it stays invalid)."""
        if self._finished:
            return ""
        self._finished = True
        rest = self._pending + self._held
        self._pending, self._held = [], []
        if not rest:
            return ""
        decode = self._backend.decode
        prefix = decode(self._window, skip_special_tokens=self._skip)
        full = decode(self._window + rest, skip_special_tokens=self._skip)
        # The stream guarantees the prefix is stable; the fallback keeps the output going if it ever is not.
        tail = full[len(prefix):] if full.startswith(prefix) else full
        if tail:
            self._parts.append(tail)
            self._text = None
        return tail
