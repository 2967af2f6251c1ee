"""Render chat messages with a profile's template, refusing control-token injection.

Injection policy: **reject**. Text that could forge the prompt's structure — a special token such as
``<|eot_id|>`` / ``<|start_header_id|>`` / ``<s>``, or a komt role marker such as ``### Response:`` — is refused
with :class:`PromptInjectionError` naming the message and the offending string. Rejecting (rather than silently
rewriting) keeps what the model sees equal to what the caller sent, and makes attacks visible in logs. Ordinary
markdown (``### 제목``) is allowed; only the role markers are refused. The check is judged on what the model sees
(:mod:`koserve.chat.injection`): text normalised as the tokenizer does (``▁`` is a space to Llama-2) and folded for
look-alikes, and — given a tokenizer — the token ids each message contributes to the rendered prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Mapping, Union

import jinja2

from koserve.chat.injection import (
    PromptInjectionError,
    TextSpan,
    check_no_control_strings,
    check_prompt_tokens,
    control_string_pattern,
)
from koserve.errors import InvalidRequestError
from koserve.profiles import ModelProfile, load_profile

if TYPE_CHECKING:
    from koserve.text.tokenizer import TextTokenizer

__all__ = ["USE_DEFAULT", "Message", "PromptInjectionError", "RenderedPrompt", "control_string_pattern",
           "check_no_control_strings", "render_prompt", "render_prompt_spans"]

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class _UseDefault:
    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT = _UseDefault()
"""Sentinel for ``system_prompt``: use the profile's default system prompt (when the messages have none)."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


MessageLike = Union[Message, Mapping[str, str]]


@lru_cache(maxsize=None)
def _template(chat_format: str) -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )
    return env.get_template(f"{chat_format}.j2")


def _coerce(messages: Iterable[MessageLike]) -> list[Message]:
    result = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            role, content = m.role, m.content
        elif isinstance(m, Mapping):
            role, content = m.get("role"), m.get("content")
        else:
            raise InvalidRequestError(f"messages[{i}] must be a mapping with 'role' and 'content', got {type(m).__name__}")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise InvalidRequestError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        result.append(Message(role, content))
    return result


def _check_order(messages: list[Message], add_generation_prompt: bool) -> None:
    if not messages:
        raise InvalidRequestError("messages must contain at least one message")
    for i, m in enumerate(messages):
        if m.role == "system" and i != 0:
            raise InvalidRequestError(f"messages[{i}]: a system message is only allowed first")
    turns = [m for m in messages if m.role != "system"]
    if not turns:
        raise InvalidRequestError("messages must contain at least one user message")
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m.role != expected:
            raise InvalidRequestError(
                f"user and assistant messages must alternate starting with user; turn {i} is {m.role!r}"
            )
    if add_generation_prompt and turns[-1].role != "user":
        raise InvalidRequestError("the last message must be from the user to generate a reply")


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt and where each message's content sits in it (``spans[i]`` is ``messages[i]``)."""

    text: str
    spans: tuple[TextSpan, ...]


# Private-use characters around a message index stand in for the contents while the template renders, so that
# the contents' positions in the output are known exactly (the templates ``trim`` contents; so does the
# substitution).
_SLOT = re.compile("\ue000(\\d+)\ue001")


def _slot(i: int) -> str:
    return f"\ue000{i}\ue001"


def render_prompt_spans(
    profile: ModelProfile | str,
    messages: Iterable[MessageLike],
    *,
    system_prompt: str | None | _UseDefault = USE_DEFAULT,
    add_generation_prompt: bool = True,
    tokenizer: TextTokenizer | None = None,
) -> RenderedPrompt:
    """:func:`render_prompt`, also returning each message's span in the prompt."""
    profile = load_profile(profile)
    msgs = _coerce(messages)
    has_system = bool(msgs) and msgs[0].role == "system"
    if not has_system:
        system = profile.chat.default_system_prompt if system_prompt is USE_DEFAULT else system_prompt
        if system:
            msgs.insert(0, Message("system", system))
    elif system_prompt is not USE_DEFAULT:
        raise InvalidRequestError("give the system prompt either as the first message or as system_prompt, not both")
    _check_order(msgs, add_generation_prompt)
    fmt = profile.chat.format
    names = [f"{m.role} message {i}" for i, m in enumerate(msgs)]
    for m, where in zip(msgs, names):
        check_no_control_strings(m.content, fmt, where)
    skeleton = _template(fmt).render(
        messages=[Message(m.role, _slot(i)) for i, m in enumerate(msgs)],
        bos_token=profile.chat.bos_token,
        add_generation_prompt=add_generation_prompt,
    )
    parts: list[str] = []
    spans: list[TextSpan] = []
    length = 0
    pos = 0
    for slot in _SLOT.finditer(skeleton):
        i = int(slot.group(1))
        parts.append(skeleton[pos:slot.start()])
        length += slot.start() - pos
        content = msgs[i].content.strip()  # what the templates' ``trim`` does
        spans.append(TextSpan(length, length + len(content), names[i]))
        parts.append(content)
        length += len(content)
        pos = slot.end()
    parts.append(skeleton[pos:])
    text = "".join(parts)
    if tokenizer is not None:
        check_prompt_tokens(tokenizer, text, spans, fmt)
    return RenderedPrompt(text, tuple(spans))


def render_prompt(
    profile: ModelProfile | str,
    messages: Iterable[MessageLike],
    *,
    system_prompt: str | None | _UseDefault = USE_DEFAULT,
    add_generation_prompt: bool = True,
    tokenizer: TextTokenizer | None = None,
) -> str:
    """Render ``messages`` into the prompt string for ``profile``.

    ``system_prompt``: ``USE_DEFAULT`` uses the profile's default unless the messages start with a system message;
    a string replaces it; ``None`` sends no system prompt. Raises :class:`InvalidRequestError` (or its subclass
    :class:`PromptInjectionError`) for malformed conversations or injected control strings. With ``tokenizer``
    (the model's), the injection check also runs on the token ids each message contributes to the prompt.
    """
    return render_prompt_spans(profile, messages, system_prompt=system_prompt,
                               add_generation_prompt=add_generation_prompt, tokenizer=tokenizer).text
