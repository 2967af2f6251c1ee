"""Settings of koserve's python models, read from ``parameters`` in their rendered ``config.pbtxt``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from koserve.errors import ConfigError
from koserve.triton_models.params import ServingLimits


def model_parameters(model_config: Mapping[str, Any] | str) -> dict[str, str]:
    """``{key: string_value}`` from a Triton model config (the dict or JSON string the python backend passes)."""
    if isinstance(model_config, str):
        model_config = json.loads(model_config)
    params = model_config.get("parameters") or {}
    return {k: (v.get("string_value", "") if isinstance(v, dict) else str(v)) for k, v in params.items()}


@dataclass(frozen=True)
class ModelSettings:
    """What preprocessing, postprocessing and the BLS need to know."""

    profile: str  # a built-in profile name or the path of a profile YAML
    tokenizer_dir: Path
    limits: ServingLimits
    engine_model: str = "tensorrt_llm"
    stream_idle_timeout_s: float = 60.0
    max_streams: int = 4096

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any] | str) -> "ModelSettings":
        params = model_parameters(model_config)

        def need(key: str) -> str:
            value = params.get(key, "")
            if not value:
                raise ConfigError(f"model config parameter {key!r} is missing (render the repository with koserve)")
            return value

        def number(key: str, kind, default=None):
            value = params.get(key, "")
            if not value:
                if default is None:
                    raise ConfigError(f"model config parameter {key!r} is missing")
                return default
            try:
                return kind(value)
            except ValueError:
                raise ConfigError(f"model config parameter {key!r} must be a number, got {value!r}") from None

        profile = params.get("profile_file") or need("profile")
        return cls(
            profile=profile,
            tokenizer_dir=Path(need("tokenizer_dir")),
            limits=ServingLimits(
                max_batch_size=number("max_batch_size", int),
                max_input_len=number("max_input_len", int),
                max_seq_len=number("max_seq_len", int),
            ),
            engine_model=params.get("engine_model") or "tensorrt_llm",
            stream_idle_timeout_s=number("stream_idle_timeout_s", float, 60.0),
            max_streams=number("max_streams", int, 4096),
        )

    @cached_property
    def model_profile(self):
        from koserve.profiles import load_profile  # noqa: PLC0415

        return load_profile(self.profile)

    @cached_property
    def tokenizer(self):
        from koserve.text import load_tokenizer  # noqa: PLC0415

        return load_tokenizer(self.tokenizer_dir)
