"""``replay`` mode: emits a fixed token sequence at a fixed pace — a deterministic test double for the GPU engine.

Every request gets the same tokens: the tokenization (no special tokens) of a Korean text, from the first token,
one token every ``delay_ms`` milliseconds (the first one ``delay_ms`` after the request is admitted). The prompt
and the sampling parameters do not change what is emitted. End ids and stop words end a request exactly as in the
``hf`` engine (an end id in the text ends it unemitted; a stop word is emitted, then ends it), and so does
``request_output_len``. When the text runs out the request ends as if the model had sampled an end id
(``at_end="stop"``) or the text starts over (``at_end="repeat"``). As in TensorRT-LLM, the final chunk carries
the last tokens when the end is known with them (length, stop word) and no tokens when the end is an end id or the
end of the text (seen one step later, the end id never being emitted).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from koserve.errors import ConfigError, InvalidRequestError
from koserve.cpu_engine.scheduler import Engine, Sequence
from koserve.cpu_engine.types import FinishReason

# Hangul, spaces, Latin, digits, punctuation and an emoji: what a Korean chat answer looks like on the wire.
BUILTIN_REPLAY_TEXT = (
    "안녕하세요! 저는 한국어로 대화하는 인공지능 도우미입니다. "
    "오늘 서울의 날씨는 맑고, 기온은 영상 12도 정도예요. "
    "산책하기 좋은 날이니 한강 공원에 가 보는 건 어떨까요? 🌸 "
    "궁금한 점이 있으면 언제든지 물어보세요: 요리, 여행, 프로그래밍(Python, C++) 모두 괜찮습니다. "
    "\"천 리 길도 한 걸음부터\"라는 속담처럼, 작은 질문부터 시작해 봅시다."
)


def long_replay_text(tokens: int) -> str:
    """:data:`BUILTIN_REPLAY_TEXT` repeated often enough for ``tokens`` tokens (benchmarks that stream long answers;
    the passage is 122 Llama-3 and 278 Llama-2 tokens, so at least 100 either way)."""
    return " ".join([BUILTIN_REPLAY_TEXT] * (max(0, tokens) // 100 + 1))


def load_replay_tokens(tokenizer_path: str | os.PathLike, text_file: str | os.PathLike | None = None) -> list[int]:
    """Token ids of the replay text (``text_file`` if given, else :data:`BUILTIN_REPLAY_TEXT`), no special tokens."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    path = Path(tokenizer_path)
    tok_file = path / "tokenizer.json" if path.is_dir() else path
    if not tok_file.is_file():
        raise ConfigError(f"replay engine: no tokenizer.json at {tok_file}")
    if text_file:
        try:
            text = Path(text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"replay engine: cannot read replay text file {text_file}: {exc}") from exc
    else:
        text = BUILTIN_REPLAY_TEXT
    ids = Tokenizer.from_file(str(tok_file)).encode(text, add_special_tokens=False).ids
    if not ids:
        raise ConfigError(f"replay engine: the replay text {text_file or '(built-in)'} has no tokens")
    return ids


class _ReplayState:
    __slots__ = ("due", "pos")

    def __init__(self, due: float):
        self.pos = 0
        self.due = due


class ReplayEngine(Engine):
    """Emits ``tokens`` at ``delay_ms`` per token to every request (see the module docstring)."""

    name = "replay"

    def __init__(self, tokens: list[int], *, delay_ms: float = 0.0, at_end: str = "stop", **kwargs):
        super().__init__(**kwargs)
        if not tokens:
            raise ConfigError("replay engine: the token sequence is empty")
        if delay_ms < 0:
            raise ConfigError(f"replay engine: replay_delay_ms must be >= 0, got {delay_ms}")
        if at_end not in ("stop", "repeat"):
            raise ConfigError(f"replay engine: replay_at_end must be 'stop' or 'repeat', got {at_end!r}")
        self.tokens = list(tokens)
        self.delay = delay_ms / 1000.0
        self.at_end = at_end

    def validate(self, request) -> None:
        # a fixed text cannot follow a grammar: refusing is honest, emitting off-grammar text would not be
        if request.guided is not None:
            raise InvalidRequestError(
                "guided decoding (guided_decoding_guide_type) needs a model: the replay engine emits a fixed text and "
                "cannot follow a guide; render with --cpu-model"
            )

    def _token_at(self, pos: int) -> int | None:
        if pos < len(self.tokens):
            return self.tokens[pos]
        return self.tokens[pos % len(self.tokens)] if self.at_end == "repeat" else None

    def _step(self, seq: Sequence) -> bool:
        now = time.monotonic()
        st = seq.state
        if st is None:
            st = seq.state = _ReplayState(now + self.delay)
        if now < st.due:
            return False
        token = self._token_at(st.pos)
        st.pos += 1
        # pace from the schedule, not from "now", so scheduler jitter does not accumulate
        st.due = max(st.due + self.delay, now) if self.delay else now
        if token is None:
            seq.finish(FinishReason.END_ID)
            return True
        # As TensorRT-LLM: the end is seen at the next step (the end id is not emitted), so a streamed request's last
        # tokens come in a response of their own and the final response carries no tokens (postprocessing relies on
        # this: koserve.triton_models.postprocess.StreamEnd).
        seq.accept(token)
        return True

    def _next_due(self) -> float:
        if not self.delay:
            return 0.0
        now = time.monotonic()
        dues = [s.state.due for s in self._active if s.state is not None]
        if len(dues) < len(self._active):
            return 0.0
        return max(0.0, min(dues) - now)
