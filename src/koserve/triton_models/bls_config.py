"""The ``tensorrt_llm_bls`` model's settings, read once from its model config (``parameters``, with
``KOSERVE_BLS_<NAME>`` environment overrides for the numbers)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from koserve.errors import ConfigError
from koserve.triton_models.server_url import own_grpc_url
from koserve.triton_models.settings import ModelSettings, model_parameters
from koserve.triton_models.stream_defaults import (
    DEFAULT_MAX_INTERVAL_US,
    DEFAULT_MAX_WAIT_GAPS,
    DEFAULT_SEND_SHARE,
    MAX_INTERVAL_LIMIT_US,
    MAX_WAIT_GAPS_LIMIT,
)

CANCEL_POLL_S = 0.25  # how often to ask is_cancelled() when polling is on


def _setting(params: Mapping[str, str], name: str, default, kind, low, high):
    """A number from the environment (``KOSERVE_BLS_<NAME>``), the model parameters or ``default``, in [low, high]."""
    raw = os.environ.get(f"KOSERVE_BLS_{name.upper()}") or params.get(name) or str(default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what} in [{low}, {high}], got {raw!r}")
    return value


@dataclass(frozen=True)
class BlsConfig:
    """What the BLS needs to know besides each request."""

    settings: ModelSettings
    engine_grpc_url: str  # host:port of this server's gRPC endpoint (the engine transport's)
    decoupled: bool = True  # this model streams (else one response per request)
    engine_streams: bool = True  # ask the engine to stream (false for a non-decoupled tensorrt_llm)
    cancel_poll_s: float = CANCEL_POLL_S  # 0: no cancellation watch
    send_share: float = DEFAULT_SEND_SHARE
    max_interval_s: float = DEFAULT_MAX_INTERVAL_US / 1e6
    max_wait_gaps: float = DEFAULT_MAX_WAIT_GAPS

    @classmethod
    def from_model_config(cls, model_config: Mapping[str, Any] | str, *, decoupled: bool = True) -> "BlsConfig":
        params = model_parameters(model_config)
        url = own_grpc_url(params.get("engine_grpc_url", ""))
        if url is None:
            raise ConfigError(
                "tensorrt_llm_bls calls the engine over its own server's gRPC endpoint, and found none: start "
                "tritonserver with gRPC on (no --allow-grpc=false) or set the model parameter engine_grpc_url "
                "(host:port)"
            )
        return cls(
            settings=ModelSettings.from_model_config(model_config),
            engine_grpc_url=url,
            decoupled=decoupled,
            # a non-decoupled tensorrt_llm refuses streaming=true: ask it for the whole answer (render option
            # engine_decoupled; the render then makes this model non-decoupled too, so no client streams)
            engine_streams=params.get("engine_decoupled", "true").strip().lower() not in ("false", "0", "no", "off"),
            cancel_poll_s=_setting(params, "cancel_poll_s", CANCEL_POLL_S, float, 0.0, 3600.0),
            send_share=_setting(params, "stream_send_share", DEFAULT_SEND_SHARE, float, 0.0, 1.0),
            max_interval_s=_setting(params, "stream_max_interval_us", DEFAULT_MAX_INTERVAL_US, int, 0,
                                    MAX_INTERVAL_LIMIT_US) / 1e6,
            max_wait_gaps=_setting(params, "stream_max_wait_gaps", DEFAULT_MAX_WAIT_GAPS, float, 0.0,
                                   MAX_WAIT_GAPS_LIMIT),
        )
