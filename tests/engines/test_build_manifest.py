"""read_engine_limits against a config.json shaped like TensorRT-LLM 1.2's trtllm-build output."""

import json
import shutil
from pathlib import Path

import pytest

from koserve.engines.manifest import read_engine_limits, read_manifest
from koserve.errors import ConfigError

SAMPLE = Path(__file__).parent / "data" / "engine-config-trtllm-1.2-llama3-70b-fp8-tp4.json"


def _engine(tmp_path, config) -> Path:
    d = tmp_path / "engine"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(config) if not isinstance(config, str) else config)
    return d


def test_reads_limits_from_a_trtllm_1_2_engine_config(tmp_path):
    d = tmp_path / "engine"
    d.mkdir()
    shutil.copy(SAMPLE, d / "config.json")
    lim = read_engine_limits(d)
    assert (lim.max_batch_size, lim.max_input_len, lim.max_seq_len, lim.max_num_tokens) == (256, 7168, 8192, 8192)
    assert (lim.tp_size, lim.pp_size, lim.world_size, lim.max_beam_width) == (4, 1, 4, 1)
    assert (lim.quant_algo, lim.kv_cache_quant_algo, lim.dtype, lim.trtllm_version) == ("FP8", "FP8", "bfloat16", "1.2.1")
    assert lim.max_output_len == 8191


def _broken(path_keys, value):
    config = json.loads(SAMPLE.read_text())
    target = config
    for key in path_keys[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path_keys[-1]]
    else:
        target[path_keys[-1]] = value
    return config


@pytest.mark.parametrize(
    "config, message",
    [
        (_broken(["build_config", "max_seq_len"], KeyError), "build_config has no max_seq_len"),
        (_broken(["build_config", "max_batch_size"], "256"), "max_batch_size must be a positive integer, got '256'"),
        (_broken(["build_config", "max_input_len"], 9000), "max_input_len 9000 exceeds max_seq_len 8192"),
        (_broken(["pretrained_config", "mapping"], KeyError), "pretrained_config has no mapping"),
        (_broken(["pretrained_config", "mapping", "world_size"], 8), "world_size 8 != tp_size 4"),
        (_broken(["build_config"], KeyError), "lacks build_config/pretrained_config"),
        ({"builder_config": {"max_batch_size": 8}, "plugin_config": {}}, "pre-0.8 TensorRT-LLM engine config"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_clear_errors(tmp_path, config, message):
    with pytest.raises(ConfigError) as exc:
        read_engine_limits(_engine(tmp_path, config))
    assert message in str(exc.value) and "config.json" in str(exc.value)


def test_missing_engine_and_manifest(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_engine_limits(tmp_path / "nope")
    d = _engine(tmp_path, json.loads(SAMPLE.read_text()))
    with pytest.raises(ConfigError, match="engine manifest .* not found"):
        read_manifest(d)
