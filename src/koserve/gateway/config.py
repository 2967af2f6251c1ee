"""Gateway settings: which OpenAI model names map to which profile and Triton, API keys, limits.

A YAML file (``koserve gateway --config gateway.yaml``)::

    models:
      - name: akallama-70b          # the "model" clients send
        profile: akallama-70b       # koserve profile (defaults to name)
        url: 127.0.0.1:8001         # this profile's Triton (host:port = gRPC, http://... = HTTP); replicas of the
                                    # same model: a list, or addresses separated by "|" (also in --model)
        target: engine              # engine (default): template, tokenization, detokenization and stop strings here,
                                    # token ids straight to tensorrt_llm (needs gRPC and a tokenizer); or ensemble,
                                    # tensorrt_llm_bls (text to Triton)
        tokenizer: /models/akallama/ # for usage.prompt_tokens and the token-level injection check; default:
                                     # the fixture tokenizer of the profile's family (`koserve setup fixtures`);
                                     # "none": go without (prompt_tokens 0)
    max_request_bytes: 1048576
    request_timeout: 300
    allow_raw_prompts: false        # true: /v1/completions prompts skip the chat-format injection policy

or the same per model on the command line: ``--model akallama-70b=127.0.0.1:8001`` (``NAME=URL[,key=value...]``).
API keys come from ``KOSERVE_API_KEYS`` (comma-separated); none set means no authentication.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from koserve.errors import ConfigError, validation_error_message

API_KEYS_ENV = "KOSERVE_API_KEYS"
NO_TOKENIZER = "none"  # tokenizer: none — serve without a tokenizer (usage.prompt_tokens is 0)


class ModelRoute(BaseModel):
    """One served model as the gateway exposes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$", max_length=128)
    profile: str = ""
    url: str  # one Triton, or several replicas of the same model separated by "|" (YAML: also a list)
    protocol: Literal["grpc", "http"] | None = None
    # where requests go: "engine" = tensorrt_llm with token ids (koserve.frontend); the others take text.
    # None: engine when the url is gRPC, else ensemble (resolved by the app, which also knows the tokenizer)
    target: Literal["engine", "ensemble", "tensorrt_llm_bls"] | None = None
    tokenizer: str | None = None
    max_tokens: int | None = Field(default=None, gt=0, description="cap on max_tokens (default: the profile's context)")
    # the engine's limits for target engine (default: read from the server's rendered preprocessing config)
    max_input_len: int | None = Field(default=None, gt=0)
    max_seq_len: int | None = Field(default=None, gt=1)

    @field_validator("url", mode="before")
    @classmethod
    def _replica_list(cls, value: object) -> object:
        return "|".join(str(v).strip() for v in value) if isinstance(value, (list, tuple)) else value

    @field_validator("url")
    @classmethod
    def _replicas_given(cls, value: str) -> str:
        urls = [u.strip() for u in value.split("|")]
        if not all(urls):
            raise ValueError(f"url {value!r} has an empty address (replicas are separated by '|')")
        if len(set(urls)) != len(urls):
            raise ValueError(f"url {value!r} names a replica twice")
        return "|".join(urls)

    @property
    def urls(self) -> tuple[str, ...]:
        """The replicas' addresses (one for a single Triton); koserve.gateway.replicas routes between them."""
        return tuple(self.url.split("|"))

    @property
    def grpc(self) -> bool:
        """Whether the route's Triton addresses are gRPC ones (anything but http(s)://, or protocol=grpc)."""
        return self.protocol == "grpc" or (self.protocol is None and not self.url.startswith(("http://", "https://")))

    @model_validator(mode="after")
    def _default_profile(self) -> "ModelRoute":
        if not self.profile:
            object.__setattr__(self, "profile", self.name)
        if self.target == "engine" and not self.grpc:
            raise ValueError(f"target engine sends token ids over Triton's gRPC stream_infer: url {self.url!r} is "
                             "HTTP; give the gRPC address (host:port) or target=ensemble")
        if (self.max_input_len is None) != (self.max_seq_len is None):
            raise ValueError("give max_input_len and max_seq_len together (the engine's limits)")
        return self


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelRoute] = Field(min_length=1)
    api_keys: list[str] = Field(default_factory=list)
    max_request_bytes: int = Field(default=1 << 20, gt=0)
    max_messages: int = Field(default=256, gt=0)
    request_timeout: float = Field(default=300.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)
    # /v1/completions prompts are checked like chat messages (no control tokens, no role markers) unless this is on:
    # then a caller may send a whole pre-templated prompt (as a raw Triton client can).
    allow_raw_prompts: bool = False

    @field_validator("models")
    @classmethod
    def _unique(cls, models: list[ModelRoute]) -> list[ModelRoute]:
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        return models

    def route(self, name: str) -> ModelRoute | None:
        return next((m for m in self.models if m.name == name), None)


def parse_model_spec(spec: str) -> ModelRoute:
    """``NAME=URL[,profile=P][,target=T][,protocol=grpc|http][,tokenizer=DIR][,max_tokens=N][,max_input_len=N,
    max_seq_len=N]``."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ConfigError(f"--model {spec!r}: expected NAME=URL[,key=value...], e.g. akallama-70b=127.0.0.1:8001")
    url, *options = rest.split(",")
    fields: dict[str, object] = {"name": name.strip(), "url": url.strip()}
    for opt in options:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ConfigError(f"--model {spec!r}: option {opt!r} is not key=value")
        fields[key.strip()] = value.strip()
    try:
        return ModelRoute.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(validation_error_message(f"gateway configuration in --model {spec!r}", exc)) from None


def api_keys_from_env(environ: dict[str, str] | None = None) -> list[str]:
    raw = (environ if environ is not None else os.environ).get(API_KEYS_ENV, "")
    return [k.strip() for k in raw.split(",") if k.strip()]


def load_config(path: str | Path | None = None, *, model_specs: list[str] | None = None,
                environ: dict[str, str] | None = None, **overrides: object) -> GatewayConfig:
    """Config from a YAML file and/or ``--model`` specs; API keys from the file plus ``KOSERVE_API_KEYS``."""
    data: dict[str, object] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read gateway config {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"gateway config {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"gateway config {path} must be a mapping")
        data.update(loaded)
    models = list(data.get("models") or [])
    models += [parse_model_spec(s).model_dump() for s in model_specs or []]
    data["models"] = models
    data["api_keys"] = list(data.get("api_keys") or []) + api_keys_from_env(environ)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if not models:
        raise ConfigError("the gateway needs at least one model: --model NAME=URL or a config file with models:")
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_error_message(f"gateway configuration in {path or 'options'}", exc)) from None
    from koserve.profiles import load_profile  # noqa: PLC0415

    for route in config.models:
        load_profile(route.profile)  # unknown profile: ConfigError now, not at the first request
    return config
