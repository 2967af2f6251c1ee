"""Prompt-injection checks, judged on what the model sees.

Text a caller supplies (message contents, a raw ``/v1/completions`` prompt) must not contribute a control token or a
role marker of the chat format: Llama-3's ``<|...|>`` special tokens; Llama-2's ``<s>``, ``</s>``, ``<unk>``, komt's
``<|end|>`` and its ``### instruction:`` / ``### Response:`` / ``### input:`` markers. Two layers:

1. **Text, normalised as the tokenizers do and folded for look-alikes** (:func:`find_control_sequence`). Before the
   patterns are matched each character is folded: SentencePiece's space marker ``▁`` (U+2581) becomes a space — the
   Llama-2 normalizer turns every space into ``▁``, so ``###▁Response:`` *is* ``### Response:`` to the model — then
   NFKC (full-width ``＃＃＃ Ｒｅｓｐｏｎｓｅ：``, ``﹟``, ideographic space, ...), and invisible format characters
   (zero-width space/joiners, soft hyphen, BOM) are dropped; matching ignores case and takes any whitespace between
   the parts of a marker. Look-alikes that fold to a marker are refused even where their token ids differ: they are
   attempts, not prose. No tokenizer needed.
2. **Token ids**, when a tokenizer is at hand (:func:`check_prompt_tokens`): the whole prompt is encoded as the
   server encodes it, and the tokens whose characters come from caller text must not be special (added) tokens,
   and must not decode to text that layer 1 refuses.

Ordinary text passes: Korean, markdown headings (``### 제목``), a lone ``#``, ``C#``, ``a < b``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable

from koserve.errors import InvalidRequestError

if TYPE_CHECKING:
    from koserve.text.tokenizer import TextTokenizer


class PromptInjectionError(InvalidRequestError):
    """A message contains a control token or role marker of the chat format."""


SPACE_MARKER = "\u2581"  # SentencePiece's "▁": the Llama-2 normalizer writes it for every space

# Llama-3 special tokens all look like <|name|> (including <|reserved_special_token_N|>).
_LLAMA3_CONTROL = r"<\|\s*[a-z0-9_]+\s*\|>"
# Llama-2 SentencePiece specials, komt's own end marker, and komt's role markers at any position.
_KOMT_CONTROL = r"</?s>|<unk>|<\|\s*end\s*\|>|###\s*(?:instruction|response|input)\s*:"

_CONTROL = {"llama3": _LLAMA3_CONTROL, "komt": _KOMT_CONTROL}


@lru_cache(maxsize=None)
def control_string_pattern(chat_format: str) -> re.Pattern[str]:
    """Regex of the strings caller text may not contain for ``chat_format`` (matched on :func:`fold` output)."""
    return re.compile(_CONTROL[chat_format], re.IGNORECASE)


# Every control sequence of both formats starts with "#" or "<" (after folding), and every special token of both
# tokenizers contains "<". These are all the characters whose NFKC form is "#" or "<" (a test scans all of Unicode):
# text without any of them cannot match, which keeps the check cheap for ordinary text.
TRIGGER_CHARS = "#\ufe5f\uff03<\ufe64\uff1c"
_TRIGGER = re.compile(f"[{TRIGGER_CHARS}]")


def _fold_char(c: str) -> str:
    if unicodedata.category(c) == "Cf":  # zero-width space/joiners, soft hyphen, BOM, bidi controls
        return ""
    return unicodedata.normalize("NFKC", c.replace(SPACE_MARKER, " "))


class _FoldTable(dict):
    """``str.translate`` table that folds each character on first sight (then at C speed)."""

    MAX_ENTRIES = 100_000  # text with all of Unicode would otherwise grow it to 1.1M entries

    def __missing__(self, codepoint: int) -> str:
        folded = _fold_char(chr(codepoint))
        if len(self) >= self.MAX_ENTRIES:
            self.clear()
        self[codepoint] = folded
        return folded


_FOLD_TABLE = _FoldTable()


def fold_text(text: str) -> str:
    """``text`` folded for matching: ``▁`` → space, NFKC per character, format characters dropped."""
    return text.translate(_FOLD_TABLE)


def fold(text: str) -> tuple[str, list[int]]:
    """``text`` folded for matching, and for each folded character the index of the character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for i, c in enumerate(text):
        f = _FOLD_TABLE[ord(c)]
        out.append(f)
        origin.extend([i] * len(f))
    return "".join(out), origin


@dataclass(frozen=True)
class ControlMatch:
    """A control sequence found in caller text: the original characters and what they fold to."""

    original: str
    folded: str


def find_control_sequence(text: str, chat_format: str) -> ControlMatch | None:
    """The first control sequence of ``chat_format`` in ``text`` (after folding), or ``None``."""
    if _TRIGGER.search(text) is None:
        return None
    pattern = control_string_pattern(chat_format)
    if pattern.search(fold_text(text)) is None:
        return None
    folded, origin = fold(text)  # again with each character's origin, to quote the caller's own characters
    m = pattern.search(folded)
    assert m is not None
    start, end = origin[m.start()], origin[m.end() - 1] + 1
    return ControlMatch(text[start:end], m.group(0))


def _refuse(where: str, chat_format: str, found: ControlMatch, how: str = "") -> PromptInjectionError:
    seen = "" if found.original == found.folded else f" (read as {found.folded!r})"
    return PromptInjectionError(
        f"{where} contains the control sequence {found.original!r}{seen}{how}, which is reserved by the "
        f"{chat_format} chat format; remove it"
    )


def check_no_control_strings(text: str, chat_format: str, where: str) -> None:
    """Raise :class:`PromptInjectionError` if ``text`` contains a control sequence of ``chat_format``."""
    found = find_control_sequence(text, chat_format)
    if found is not None:
        raise _refuse(where, chat_format, found)


@dataclass(frozen=True)
class TextSpan:
    """Characters ``[start, end)`` of a prompt that came from caller text, and what to call them in errors."""

    start: int
    end: int
    where: str


def _special_ids(tokenizer: TextTokenizer) -> dict[int, str]:
    return {i: t.content for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special}


def _span_tokens(encoding, span: TextSpan, prompt_len: int) -> range:
    """Indices of the tokens whose characters overlap ``span`` (tokens are in character order)."""
    n = len(encoding.ids)
    if span.end <= span.start:
        return range(0)
    first = encoding.char_to_token(span.start)
    stop = n if span.end >= prompt_len else encoding.char_to_token(span.end)
    if first is None or stop is None:  # a character without a token of its own: go by every token's offsets
        hits = [i for i, (a, b) in enumerate(encoding.offsets) if a < span.end and b > span.start]
        return range(hits[0], hits[-1] + 1) if hits else range(0)
    if stop < n and encoding.token_to_chars(stop)[0] < span.end:  # a token straddling the span's end
        stop += 1
    return range(first, stop)


# Prompts longer than this skip the token layer (layer 1 still applies): the Llama-2 BPE has no pre-tokenizer, so
# encoding grows faster than linearly (0.5 s at 72K Korean characters, 14 s at 900K), and no served context holds
# such a prompt anyway (the engine refuses it by its input limit).
MAX_TOKEN_CHECK_CHARS = 65536


def check_prompt_tokens(tokenizer: TextTokenizer, prompt: str, spans: Iterable[TextSpan], chat_format: str) -> None:
    """Encode ``prompt`` as the server does and refuse control tokens among the tokens of caller text.

    A token belongs to a span when its characters overlap it. Special tokens there are refused; the span's tokens
    are decoded back to text (what the model reads) and checked with :func:`find_control_sequence`. Prompts over
    :data:`MAX_TOKEN_CHECK_CHARS` characters are left to the text layer.
    """
    if len(prompt) > MAX_TOKEN_CHECK_CHARS:
        return
    encoding = tokenizer.backend.encode(prompt, add_special_tokens=False)
    special = _special_ids(tokenizer)
    all_ids = encoding.ids
    for span in spans:
        tokens = _span_tokens(encoding, span, len(prompt))
        ids = all_ids[tokens.start:tokens.stop]
        for tid in set(ids) & special.keys():
            found = ControlMatch(special[tid], special[tid])
            raise _refuse(span.where, chat_format, found, f" (token id {tid})")
        if _TRIGGER.search(prompt, span.start, span.end) is None:
            continue  # no "#"/"<" in the caller's characters: their tokens cannot decode to a control sequence
        decoded = tokenizer.backend.decode(ids, skip_special_tokens=False)
        found = find_control_sequence(decoded, chat_format)
        if found is not None:
            raise _refuse(span.where, chat_format, found, " in the tokens the model receives")


def check_prompt(chat_format: str, prompt: str, *, where: str = "the prompt",
                 tokenizer: TextTokenizer | None = None) -> None:
    """The policy for a whole caller-supplied prompt (``/v1/completions``): both layers on all of it."""
    check_no_control_strings(prompt, chat_format, where)
    if tokenizer is not None:
        check_prompt_tokens(tokenizer, prompt, [TextSpan(0, len(prompt), where)], chat_format)
