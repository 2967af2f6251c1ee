"""The BLS's settings from its model config (``koserve.triton_models.bls_config.BlsConfig``): the engine's gRPC URL
(the parameter, else the environment, else the server's command line: outside a tritonserver there is none, and
the model refuses to load naming what to set), the stream options with their bounds and environment overrides."""

from __future__ import annotations

import pytest

from koserve.errors import ConfigError
from koserve.fixtures import tokenizer_dir
from koserve.triton_models.bls_config import BlsConfig


def model_config(**params) -> dict:
    base = {"profile": "akallama-70b", "tokenizer_dir": str(tokenizer_dir("llama3")), "max_batch_size": "8",
            "max_input_len": "64", "max_seq_len": "128", **params}
    return {"parameters": {k: {"string_value": v} for k, v in base.items()}}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for name in ("GRPC_URL", "CANCEL_POLL_S", "STREAM_SEND_SHARE", "STREAM_MAX_INTERVAL_US", "STREAM_MAX_WAIT_GAPS"):
        monkeypatch.delenv(f"KOSERVE_BLS_{name}", raising=False)


def test_without_a_grpc_endpoint_the_model_refuses_to_load_naming_what_to_set():
    with pytest.raises(ConfigError, match=r"--allow-grpc=false.*engine_grpc_url"):
        BlsConfig.from_model_config(model_config())  # this test process is not a tritonserver's stub


def test_the_url_from_the_parameter_or_the_environment(monkeypatch):
    assert BlsConfig.from_model_config(model_config(engine_grpc_url="127.0.0.1:8123")).engine_grpc_url == \
        "127.0.0.1:8123"
    monkeypatch.setenv("KOSERVE_BLS_GRPC_URL", "127.0.0.1:9001")
    assert BlsConfig.from_model_config(model_config()).engine_grpc_url == "127.0.0.1:9001"


def test_stream_options_defaults_overrides_and_bounds(monkeypatch):
    config = BlsConfig.from_model_config(model_config(engine_grpc_url="h:1", stream_max_interval_us="50000",
                                                      engine_decoupled="false"), decoupled=False)
    assert (config.max_interval_s, config.send_share, config.max_wait_gaps, config.cancel_poll_s) == \
        (0.05, 0.25, 1.5, 0.25)
    assert not config.engine_streams and not config.decoupled
    monkeypatch.setenv("KOSERVE_BLS_STREAM_SEND_SHARE", "0")
    assert BlsConfig.from_model_config(model_config(engine_grpc_url="h:1")).send_share == 0.0
    monkeypatch.setenv("KOSERVE_BLS_STREAM_SEND_SHARE", "1.5")
    with pytest.raises(ConfigError, match=r"stream_send_share must be a number in \[0.0, 1.0\], got '1.5'"):
        BlsConfig.from_model_config(model_config(engine_grpc_url="h:1"))
