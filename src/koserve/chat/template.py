"""Render chat messages with a profile's template, refusing control-token injection.

Injection policy: **reject**. Text that could forge the prompt's structure — a special token such as
``<|eot_id|>`` / ``<|start_header_id|>`` / ``<s>``, or a komt role marker such as ``### Response:`` — is refused
with :class:`PromptInjectionError` naming the message and the offending string. Rejecting (rather than silently
rewriting) keeps what the model sees equal to what the caller sent, and makes attacks visible in logs. Ordinary
markdown (``### 제목``) is allowed; only the role markers are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal, Mapping, Union

import jinja2

from koserve.errors import InvalidRequestError
from koserve.profiles import ModelProfile, load_profile

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")


class _UseDefault:
    def __repr__(self) -> str:
        return "USE_DEFAULT"


USE_DEFAULT = _UseDefault()
"""Sentinel for ``system_prompt``: use the profile's default system prompt (when the messages have none)."""


class PromptInjectionError(InvalidRequestError):
    """A message contains a control token or role marker of the chat format."""


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


MessageLike = Union[Message, Mapping[str, str]]

# Llama-3 special tokens all look like <|name|> (including <|reserved_special_token_N|>).
_LLAMA3_CONTROL = r"<\|[A-Za-z0-9_]+\|>"
# Llama-2 SentencePiece specials, komt's own end marker, and komt's role markers at any position.
_KOMT_CONTROL = r"</?s>|<unk>|<\|end\|>|###\s*(?:instruction|response|input)\s*:"

_CONTROL = {"llama3": _LLAMA3_CONTROL, "komt": _KOMT_CONTROL}


@lru_cache(maxsize=None)
def control_string_pattern(chat_format: str) -> re.Pattern[str]:
    """Regex of the strings user-supplied text may not contain for ``chat_format``."""
    return re.compile(_CONTROL[chat_format], re.IGNORECASE)


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


def check_no_control_strings(text: str, chat_format: str, where: str) -> None:
    """Raise :class:`PromptInjectionError` if ``text`` contains a control string of ``chat_format``."""
    match = control_string_pattern(chat_format).search(text)
    if match:
        raise PromptInjectionError(
            f"{where} contains the control sequence {match.group(0)!r}, which is reserved by the "
            f"{chat_format} chat format; remove it"
        )


def render_prompt(
    profile: ModelProfile | str,
    messages: Iterable[MessageLike],
    *,
    system_prompt: str | None | _UseDefault = USE_DEFAULT,
    add_generation_prompt: bool = True,
) -> str:
    """Render ``messages`` into the prompt string for ``profile``.

    ``system_prompt``: ``USE_DEFAULT`` uses the profile's default unless the messages start with a system message;
    a string replaces it; ``None`` sends no system prompt. Raises :class:`InvalidRequestError` (or its subclass
    :class:`PromptInjectionError`) for malformed conversations or injected control strings.
    """
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
    for i, m in enumerate(msgs):
        check_no_control_strings(m.content, fmt, f"{m.role} message {i}")
    return _template(fmt).render(
        messages=msgs, bos_token=profile.chat.bos_token, add_generation_prompt=add_generation_prompt
    )
