"""Requests to and outputs from the CPU engine stand-in, and TensorRT-LLM's word-list format."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


from koserve.errors import InvalidRequestError
from koserve.guided.spec import GuidedDecoding


class FinishReason(str, enum.Enum):
    """Why a sequence ended (TensorRT-LLM's ``FinishReason`` names)."""

    END_ID = "end_id"  # an end id was sampled; like TensorRT-LLM, the end id itself is not emitted
    STOP_WORDS = "stop_words"  # a stop-word sequence was generated; its tokens ARE emitted (as TensorRT-LLM does)
    LENGTH = "length"  # request_output_len tokens were generated
    CANCELLED = "cancelled"  # the client went away or the request was stopped
    ERROR = "error"  # the engine failed on this request (EngineOutput.error says why)


@dataclass(frozen=True)
class EngineRequest:
    """One generation request (beam width 1).

    ``stop_words`` / ``bad_words`` are token sequences (see :func:`parse_word_list` for TensorRT-LLM's ``[2, N]``
    format). Sampling follows TensorRT-LLM: ``top_k == 0`` and ``top_p == 0`` mean "no limit", and when both are
    0 decoding is greedy; ``temperature == 0`` or ``top_k == 1`` is greedy too. ``seed`` seeds a
    per-request generator (TensorRT-LLM's default seed is 0, so unseeded sampling is reproducible too).
    Penalties apply to every token of prompt + output so far.
    """

    input_ids: tuple[int, ...]
    max_new_tokens: int
    end_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    stop_words: tuple[tuple[int, ...], ...] = ()
    bad_words: tuple[tuple[int, ...], ...] = ()
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.0
    seed: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    streaming: bool = False
    exclude_input_in_output: bool = True
    return_log_probs: bool = False
    request_id: str = ""
    guided: GuidedDecoding | None = None  # TensorRT-LLM's GuidedDecodingParams: the output follows this guide

    def __post_init__(self) -> None:
        if len(self.input_ids) == 0:
            raise InvalidRequestError("input_ids is empty: at least one prompt token is needed")
        if self.max_new_tokens <= 0:
            raise InvalidRequestError(f"request_output_len must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InvalidRequestError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidRequestError(f"runtime_top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise InvalidRequestError(f"runtime_top_p must be in [0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise InvalidRequestError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.min_tokens < 0:
            raise InvalidRequestError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if not 0 <= self.seed < 2**64:
            raise InvalidRequestError(f"seed must be in [0, 2**64), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1 or (self.top_k == 0 and self.top_p == 0.0)


@dataclass
class EngineOutput:
    """One chunk of a request's output: the tokens new since the previous chunk.

    The last chunk has ``finished=True`` and a ``finish_reason``; it may carry tokens (length / stop words) or
    none (an end id was sampled after the previous chunk was sent, or the request was cancelled).
    """

    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    finish_reason: FinishReason | None = None
    log_probs: list[float] | None = None  # one per token in token_ids, when return_log_probs
    cum_log_prob: float | None = None  # sum over all tokens generated so far, when return_log_probs
    error: str | None = None
