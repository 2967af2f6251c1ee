"""Pydantic models for profile files."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Architecture(_Strict):
    """Transformer shape of the checkpoint (used by the build planner and repo rendering)."""

    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_position_embeddings: int = Field(gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)

    @model_validator(mode="after")
    def _heads_consistent(self) -> "Architecture":
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_parameters(self) -> int:
        """Parameter count of a Llama-architecture decoder (untied embeddings)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_kv_heads * self.head_dim
        attn = h * h * 2 + h * kv * 2  # q, o and k, v projections
        mlp = 3 * h * i
        norms = 2 * h
        return self.num_layers * (attn + mlp + norms) + 2 * v * h + h


class ChatSpec(_Strict):
    """How messages become a prompt."""

    format: Literal["llama3", "komt"]
    bos_token: str
    default_system_prompt: str | None = None


class GenerationDefaults(_Strict):
    """End ids, stop words and sampling defaults."""

    end_ids: list[int] = Field(min_length=1)
    pad_id: int = Field(ge=0)
    stop_words: list[str] = Field(default_factory=list)
    temperature: float = Field(ge=0.0)
    top_p: float = Field(gt=0.0, le=1.0)
    top_k: int = Field(ge=0)
    max_new_tokens: int = Field(gt=0)

    @model_validator(mode="after")
    def _no_empty_stop_words(self) -> "GenerationDefaults":
        if any(not w for w in self.stop_words):
            raise ValueError("stop_words must not contain an empty string")
        return self


class ModelProfile(_Strict):
    """Everything koserve knows about one served model."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    display_name: str
    hf_id: str
    tokenizer_family: Literal["llama3", "llama2"]
    architecture: Architecture
    chat: ChatSpec
    generation: GenerationDefaults

    @model_validator(mode="after")
    def _ids_in_vocab(self) -> "ModelProfile":
        vocab = self.architecture.vocab_size
        for token_id in [*self.generation.end_ids, self.generation.pad_id]:
            if token_id >= vocab:
                raise ValueError(f"token id {token_id} is outside the vocabulary (vocab_size {vocab})")
        return self

    @property
    def end_id(self) -> int:
        """The primary end id (what TensorRT-LLM's scalar ``end_id`` takes)."""
        return self.generation.end_ids[0]
