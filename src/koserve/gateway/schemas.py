"""OpenAI request bodies the gateway accepts (the subset koserve can honour).

``response_format`` (json_object, json_schema) and ``tools`` / ``tool_choice`` are served through guided decoding
(:mod:`koserve.guided.openai`). OpenAI parameters koserve cannot honour (``functions``, ``logit_bias``, ...) are
refused with a 400 naming the parameter, unless they carry their neutral value (``[]``, ``"none"``, ``{}``): accepting them silently would return text that ignores what the caller asked for. Fields
OpenAI defines that do not change the output (``user``, ``metadata``, ``store``, ...) and unknown fields are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # role tool: the call this result answers
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"message content part of type {part.type!r} is not supported (text only)")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(_Lenient):
    include_usage: bool = False


class UnsupportedParameterError(ValueError):
    """An OpenAI parameter koserve cannot honour was set; ``param`` names it."""

    def __init__(self, param: str, value: Any, why: str = ""):
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        super().__init__(f"{param} is not supported by koserve (got {shown}){why}; leave it out")
        self.param = param


def _neutral(value: Any, *neutral: Any) -> bool:
    return value is None or any(value == n for n in neutral)


class _Sampling(_Lenient):
    model: str = Field(min_length=1)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # extensions (as vLLM and TensorRT-LLM's OpenAI servers accept them)
    top_k: int | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = None

    # OpenAI parameters koserve cannot honour: refused by check_supported() unless neutral
    logit_bias: Any = None
    top_logprobs: Any = None

    @field_validator("n")
    @classmethod
    def _one(cls, n: int | None) -> int:
        if n is None:  # OpenAI's own default: one choice
            return 1
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    def check_supported(self) -> None:
        """Raise :class:`UnsupportedParameterError` for a parameter koserve would otherwise ignore."""
        if not _neutral(self.logit_bias, {}):
            raise UnsupportedParameterError("logit_bias", self.logit_bias,
                                            " (ban words with the koserve client's bad_words instead)")
        if not _neutral(self.top_logprobs, 0):
            raise UnsupportedParameterError("top_logprobs", self.top_logprobs)

    def sampling(self) -> dict[str, Any]:
        fields = ("max_tokens", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                  "top_k", "repetition_penalty", "min_tokens")
        return {f: getattr(self, f) for f in fields if getattr(self, f) is not None}


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None

    def check_supported(self) -> None:
        super().check_supported()
        if not _neutral(self.functions, []):
            raise UnsupportedParameterError("functions", self.functions, ": use tools")
        if not _neutral(self.function_call, "none", "auto"):
            raise UnsupportedParameterError("function_call", self.function_call, ": use tool_choice")
        if not self.tools and not _neutral(self.tool_choice, "none", "auto"):
            raise UnsupportedParameterError("tool_choice", self.tool_choice, ": no tools were given")
        if not _neutral(self.modalities, ["text"]):
            raise UnsupportedParameterError("modalities", self.modalities, ": text only")
        for name in ("audio", "prediction"):
            value = getattr(self, name)
            if value is not None:
                raise UnsupportedParameterError(name, value)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported")
        return v

    def sampling(self) -> dict[str, Any]:
        params = super().sampling()
        if self.max_completion_tokens is not None:
            params["max_tokens"] = self.max_completion_tokens
        return params


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if not _neutral(self.best_of, 1):
            raise UnsupportedParameterError("best_of", self.best_of, ": only best_of=1")

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: int | None) -> int | None:
        if v:
            raise ValueError("logprobs are not supported")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix is not supported")
        return v

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError(f"prompt must be one string (batches are not supported), got {len(self.prompt)}")
        return self.prompt[0]
