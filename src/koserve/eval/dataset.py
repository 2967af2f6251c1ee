"""The Korean evaluation set: prompts with a short reference answer each."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from koserve.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_SET = "ko-quality-v1"
MAX_ITEMS = 10_000
MAX_TEXT_CHARS = 8_000


@dataclass(frozen=True)
class EvalItem:
    """One prompt (a user message, rendered with the profile's chat template) and its reference answer."""

    id: str
    prompt: str
    reference: str


def eval_set_path(name_or_path: str | Path = DEFAULT_SET) -> Path:
    """A shipped set by name (``ko-quality-v1``) or a JSONL file path."""
    text = str(name_or_path)
    shipped = DATA_DIR / f"{text}.jsonl"
    if "/" not in text and not text.endswith(".jsonl") and shipped.is_file():
        return shipped
    path = Path(text).expanduser()
    if not path.is_file():
        names = sorted(p.stem for p in DATA_DIR.glob("*.jsonl"))
        raise ConfigError(f"evaluation set {text!r}: not a shipped set ({', '.join(names)}) and no such file")
    return path


def load_eval_set(name_or_path: str | Path = DEFAULT_SET, *, limit: int | None = None) -> list[EvalItem]:
    """The items of an evaluation set; ConfigError naming the line for anything malformed."""
    path = eval_set_path(name_or_path)
    items: list[EvalItem] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{n}: each line must be an object with id, prompt and reference")
        fields = {}
        for key in ("id", "prompt", "reference"):
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f'{path}:{n}: "{key}" must be a non-empty string')
            if len(value) > MAX_TEXT_CHARS:
                raise ConfigError(f'{path}:{n}: "{key}" has {len(value)} characters (limit {MAX_TEXT_CHARS})')
            fields[key] = value
        if fields["id"] in seen:
            raise ConfigError(f"{path}:{n}: id {fields['id']!r} repeats an earlier line")
        seen.add(fields["id"])
        items.append(EvalItem(**fields))
        if len(items) > MAX_ITEMS:
            raise ConfigError(f"{path}: more than {MAX_ITEMS} items")
    if not items:
        raise ConfigError(f"{path}: no items")
    return items[:limit] if limit else items
