"""Prompt sources for load tests: Korean chat prompt sets and synthetic prompts of target ISL/OSL.

Prompt sets are JSONL files (``koserve/loadtest/prompts/{short,medium,long}.jsonl``), one chat per line::

    {"id": "qa-short-01", "task": "qa", "messages": [{"role": "user", "content": "..."}]}

``task`` is one of ``qa``, ``math``, ``grammar``, ``writing``, ``code``. The set name is a file
stem (``short``), ``all`` (every file in the folder), or a path to a ``.jsonl`` file or folder.

The synthetic source (like genai-perf's ``--synthetic-input-tokens-mean/-stddev``) cuts windows
of exactly ``isl`` tokens out of a Korean corpus (the prompt sets' own text) with a tokenizer;
without a tokenizer it approximates one token by one character. Output lengths (``max_tokens``)
are fixed or normal-distributed. Every source is seeded: the same seed gives the same sequence.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from koserve.errors import ConfigError

TASKS = ("qa", "math", "grammar", "writing", "code")
LENGTHS = ("short", "medium", "long")


def default_prompts_dir() -> Path:
    """The prompt sets shipped with koserve (package data ``koserve/loadtest/prompts``)."""
    return Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class ChatPrompt:
    id: str
    task: str
    length: str
    messages: tuple[dict[str, str], ...]


@dataclass
class LoadRequest:
    """One request to send: chat messages (gateway) and the prompt text (Triton ``text_input``).

    ``input_tokens``: tokens of ``text`` (no special tokens). ``model_prompt_tokens``: what the model receives when
    ``text`` is sent as the prompt (BOS as the server adds it); the gateway user counts its rendered prompt itself.
    """

    prompt_id: str
    messages: list[dict[str, str]]
    text: str
    max_tokens: int
    input_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    model_prompt_tokens: int | None = None


def load_prompt_set(name_or_path: str, prompts_dir: Path | None = None) -> list[ChatPrompt]:
    """Load a prompt set by name (``short``/``medium``/``long``/``all``) or path."""
    base = prompts_dir or default_prompts_dir()
    candidate = Path(name_or_path)
    if candidate.suffix == ".jsonl" or candidate.is_dir() or candidate.is_file():
        files = sorted(candidate.glob("*.jsonl")) if candidate.is_dir() else [candidate]
    elif name_or_path == "all":
        files = sorted(base.glob("*.jsonl"))
    else:
        files = [base / f"{name_or_path}.jsonl"]
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        known = sorted(p.stem for p in base.glob("*.jsonl")) + ["all"]
        raise ConfigError(
            f"prompt set {name_or_path!r} not found ({', '.join(map(str, missing)) or base}); "
            f"use one of {', '.join(known)}, a .jsonl path, or 'synthetic'"
        )
    prompts: list[ChatPrompt] = []
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                messages = tuple({"role": m["role"], "content": m["content"]} for m in data["messages"])
                prompt = ChatPrompt(
                    id=str(data["id"]),
                    task=str(data.get("task", "qa")),
                    length=str(data.get("length", path.stem)),
                    messages=messages,
                )
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{path}:{lineno}: not a prompt record ({exc})") from exc
            if not messages or messages[-1]["role"] != "user":
                raise ConfigError(f"{path}:{lineno}: the last message must have role 'user'")
            prompts.append(prompt)
    if not prompts:
        raise ConfigError(f"prompt set {name_or_path!r} is empty")
    return prompts


class LengthSampler:
    """Fixed (``stddev == 0``) or normal-distributed lengths, rounded and clipped to ``[1, cap]``."""

    def __init__(self, mean: int, stddev: float = 0.0, *, cap: int | None = None, rng: random.Random) -> None:
        if mean < 1:
            raise ConfigError(f"length mean must be >= 1, got {mean}")
        if stddev < 0:
            raise ConfigError(f"length stddev must be >= 0, got {stddev}")
        self.mean, self.stddev, self.cap, self._rng = mean, stddev, cap, rng

    def sample(self) -> int:
        value = self.mean if self.stddev == 0 else int(round(self._rng.gauss(self.mean, self.stddev)))
        value = max(1, value)
        return min(value, self.cap) if self.cap else value


class TokenCounter:
    """Counts tokens with a Hugging Face ``tokenizer.json``: output text without special tokens (``__call__``),
    prompts as the server encodes them (:meth:`prompt_tokens`: BOS added once, as koserve's preprocessing does)."""

    def __init__(self, path: str | Path) -> None:
        from koserve.text.tokenizer import load_tokenizer

        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise ConfigError(f"tokenizer: {file} does not exist (pass a checkpoint folder or tokenizer.json)")
        self.text_tokenizer = load_tokenizer(p)
        self.tokenizer = self.text_tokenizer.backend

    def prompt_tokens(self, text: str) -> int:
        """Tokens the model receives for the prompt ``text`` (special tokens as the server adds them)."""
        return len(self.text_tokenizer.encode(text, add_special_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __call__(self, text: str) -> int:
        return len(self.encode(text))


class ChatPromptSource:
    """Cycles through a prompt set in a seeded random order, rendering each with the chat template."""

    def __init__(
        self,
        prompts: list[ChatPrompt],
        *,
        render: Callable[[list[dict[str, str]]], str],
        osl: LengthSampler,
        seed: int = 0,
        counter: TokenCounter | None = None,
    ) -> None:
        self._prompts = list(prompts)
        self._rng = random.Random(seed)
        self._render = render
        self._osl = osl
        self._counter = counter
        self._order: list[int] = []
        self._rendered: dict[str, tuple[str, int | None, int | None]] = {}

    def next(self) -> LoadRequest:
        if not self._order:
            self._order = list(range(len(self._prompts)))
            self._rng.shuffle(self._order)
        prompt = self._prompts[self._order.pop()]
        messages = [dict(m) for m in prompt.messages]
        if prompt.id not in self._rendered:
            text = self._render(messages)
            c = self._counter
            self._rendered[prompt.id] = (text, c(text) if c else None, c.prompt_tokens(text) if c else None)
        text, n_in, n_model = self._rendered[prompt.id]
        return LoadRequest(prompt.id, messages, text, self._osl.sample(), n_in, {"task": prompt.task}, n_model)


class SyntheticPromptSource:
    """Prompts of a target input length cut from a Korean corpus (seeded)."""

    def __init__(
        self,
        corpus: str,
        *,
        isl: LengthSampler,
        osl: LengthSampler,
        seed: int = 0,
        counter: TokenCounter | None = None,
    ) -> None:
        corpus = " ".join(corpus.split())
        if not corpus:
            raise ConfigError("synthetic prompts need a non-empty corpus")
        self._rng = random.Random(seed)
        self._isl, self._osl, self._counter = isl, osl, counter
        self._corpus = corpus
        self._ids = counter.encode(corpus) if counter else None
        self._n = 0

    def _window(self, length: int) -> tuple[str, int | None]:
        if self._ids is not None:
            ids = self._ids
            reps = math.ceil((length + 1) / len(ids)) + 1
            pool = ids * reps
            start = self._rng.randrange(len(ids))
            text = self._counter.decode(pool[start : start + length])  # type: ignore[union-attr]
            return text, self._counter(text)  # type: ignore[misc]
        chars = self._corpus
        reps = math.ceil((length + 1) / len(chars)) + 1
        pool = chars * reps
        start = self._rng.randrange(len(chars))
        return pool[start : start + length], None

    def next(self) -> LoadRequest:
        self._n += 1
        text, n_in = self._window(self._isl.sample())
        return LoadRequest(
            f"synthetic-{self._n:06d}",
            [{"role": "user", "content": text}],
            text,
            self._osl.sample(),
            n_in,
            {"task": "synthetic"},
            self._counter.prompt_tokens(text) if self._counter else None,
        )


def corpus_text(prompts: list[ChatPrompt]) -> str:
    """The Korean text of every message of a prompt set (the synthetic corpus)."""
    return "\n".join(m["content"] for p in prompts for m in p.messages)
