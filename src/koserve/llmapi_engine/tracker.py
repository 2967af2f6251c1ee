"""The LLM API's cumulative output → the C++ backend's chunks (pure state, no I/O).

Each streamed ``RequestOutput`` carries ``outputs[0].token_ids`` (every token so far) and, when it ends,
``finish_reason`` ('stop', 'length', 'cancelled', 'timeout'). The C++ ``tensorrtllm`` backend's rules are applied
here, token by token: an end id ends the sequence and is not emitted; a stop word is emitted and then ends it; then
the length limit. When the tracker ends a sequence the engine has not ended, the caller aborts the request.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from koserve.llmapi_engine.request import GenerationRequest


class FinishReason(str, enum.Enum):
    """Why a sequence ended (TensorRT-LLM's executor ``FinishReason`` names)."""

    END_ID = "end_id"
    STOP_WORDS = "stop_words"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


# CompletionOutput.finish_reason (tensorrt_llm/executor/result.py) when the engine ends a sequence itself
_ENGINE_REASONS = {"stop": FinishReason.END_ID, "length": FinishReason.LENGTH,
                   "cancelled": FinishReason.CANCELLED, "timeout": FinishReason.ERROR}


@dataclass
class Chunk:
    """Tokens to send now (new since the last chunk when streaming; all of them at the end otherwise)."""

    token_ids: list[int] = field(default_factory=list)
    log_probs: list[float] | None = None
    cum_log_prob: float | None = None
    finished: bool = False
    finish_reason: FinishReason | None = None
    error: str | None = None


def token_log_prob(entry, token: int) -> float:
    """One entry of ``CompletionOutput.logprobs``: a float, or a ``{token_id: Logprob}`` dict (top-k form)."""
    if isinstance(entry, dict):
        value = entry.get(token)
        if value is None:
            return 0.0
        return float(getattr(value, "logprob", value))
    return float(entry)


class OutputTracker:
    """Per-request state: which engine tokens were seen, which were accepted, what was already sent."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.accepted: list[int] = []
        self.log_probs: list[float] = []
        self.seen = 0  # engine tokens looked at
        self.sent = 0  # accepted tokens delivered
        self.finish_reason: FinishReason | None = None
        self.error: str | None = None
        self._end_ids = frozenset(request.end_ids)
        self._final_sent = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def final_sent(self) -> bool:
        """The final chunk was taken: the request's response sender must not be touched again."""
        return self._final_sent

    def _accept(self, token: int, log_prob: float) -> None:
        if token in self._end_ids:
            self.finish_reason = FinishReason.END_ID
            return
        self.accepted.append(token)
        self.log_probs.append(log_prob)
        for word in self.request.stop_words:
            n = len(word)
            if n and len(self.accepted) >= n and tuple(self.accepted[-n:]) == word:
                self.finish_reason = FinishReason.STOP_WORDS
                return
        if len(self.accepted) >= self.request.max_tokens:
            self.finish_reason = FinishReason.LENGTH

    def update(self, token_ids, logprobs=None, engine_finish_reason: str | None = None,
               engine_finished: bool = False) -> Chunk | None:
        """Take the engine's cumulative ``token_ids`` (and ``logprobs``); return the chunk to send now, if any."""
        if self.finished:
            return None
        tokens = list(token_ids)
        for i in range(self.seen, len(tokens)):
            entry = logprobs[i] if logprobs is not None and i < len(logprobs) else 0.0
            self._accept(int(tokens[i]), token_log_prob(entry, int(tokens[i])) if self.request.return_log_probs
                         else 0.0)
            if self.finished:
                break
        self.seen = len(tokens)
        if not self.finished and engine_finished:
            self.finish_reason = _ENGINE_REASONS.get(engine_finish_reason or "", FinishReason.END_ID)
            if self.finish_reason is FinishReason.ERROR:
                self.error = f"the engine ended the request with finish_reason {engine_finish_reason!r}"
        return self._take()

    def end(self, reason: FinishReason, error: str | None = None) -> Chunk | None:
        """End from outside (cancelled, failed); the final chunk, unless one was already sent."""
        if self._final_sent:
            return None
        if not self.finished:
            self.finish_reason, self.error = reason, error
        return self._take()

    def _take(self) -> Chunk | None:
        if self._final_sent:
            return None
        if not self.request.streaming and not self.finished:
            return None
        start = self.sent if self.request.streaming else 0
        if start == len(self.accepted) and not self.finished:
            return None
        chunk = Chunk(token_ids=self.accepted[start:], finished=self.finished, finish_reason=self.finish_reason,
                      error=self.error)
        if self.request.return_log_probs:
            chunk.log_probs = self.log_probs[start:]
            chunk.cum_log_prob = sum(self.log_probs)
        self.sent = len(self.accepted)
        self._final_sent = self.finished
        return chunk
