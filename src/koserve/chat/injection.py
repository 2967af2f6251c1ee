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


@lru_cache(maxsize=4096)
def _fold_char(c: str) -> str:
    if unicodedata.category(c) == "Cf":  # zero-width space/joiners, soft hyphen, BOM, bidi controls
        return ""
    return unicodedata.normalize("NFKC", c.replace(SPACE_MARKER, " ")).replace(SPACE_MARKER, " ")


def fold(text: str) -> tuple[str, list[int]]:
    """``text`` folded for matching, and for each folded character the index of the character it came from."""
    out: list[str] = []
    origin: list[int] = []
    for i, c in enumerate(text):
        if c.isascii() and c.isprintable():  # fast path: ASCII folds to itself
            out.append(c)
            origin.append(i)
            continue
        f = _fold_char(c)
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
    folded, origin = fold(text)
    m = control_string_pattern(chat_format).search(folded)
    if m is None:
        return None
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


def check_prompt_tokens(tokenizer: TextTokenizer, prompt: str, spans: Iterable[TextSpan], chat_format: str) -> None:
    """Encode ``prompt`` as the server does and refuse control tokens among the tokens of caller text.

    A token belongs to a span when its characters overlap it. Special tokens there are refused; the span's tokens
    are decoded back to text (what the model reads) and checked with :func:`find_control_sequence`.
    """
    encoding = tokenizer.backend.encode(prompt, add_special_tokens=False)
    special = _special_ids(tokenizer)
    for span in spans:
        ids = [tid for tid, (a, b) in zip(encoding.ids, encoding.offsets) if a < span.end and b > span.start]
        for tid in ids:
            if tid in special:
                found = ControlMatch(special[tid], special[tid])
                raise _refuse(span.where, chat_format, found, f" (token id {tid})")
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
