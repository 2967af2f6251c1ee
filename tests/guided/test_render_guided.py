"""`koserve repo render --guided-decoding` (the real CLI): guided_decoding_backend xgrammar on the engine step, and
NVIDIA's tokenizer-info file (examples/generate_xgrammar_tokenizer_info.py, TensorRT-LLM release/1.2.1: keys
encoded_vocab, tokenizer_str, stop_token_ids) that xgrammar reads to the same vocabulary as from the tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from koserve.fixtures import tokenizer_dir


def _params(path) -> dict:
    cfg = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    return {k: v.string_value for k, v in cfg.parameters.items()}


@pytest.mark.parametrize("profile, family, stops", [("akallama-70b", "llama3", [128009, 128001]),
                                                    ("komt-13b", "llama2", None)])
def test_render_writes_nvidias_tokenizer_info(tmp_path, profile, family, stops):
    out = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "koserve", "repo", "render", "-p", profile, "--tokenizer",
                           str(tokenizer_dir(family)), "--replay", "--guided-decoding", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    params = _params(out / "tensorrt_llm" / "config.pbtxt")
    assert params["guided_decoding_backend"] == "xgrammar"
    info_path = out / "tensorrt_llm" / "xgrammar_tokenizer_info.json"
    assert params["xgrammar_tokenizer_info_path"] == str(info_path)
    info = json.loads(info_path.read_text(encoding="utf-8"))
    assert set(info) == {"encoded_vocab", "tokenizer_str", "stop_token_ids"}
    if stops:
        assert info["stop_token_ids"] == stops

    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    from koserve.cpu_engine.guided import load_tokenizer_info

    ours = load_tokenizer_info(info_path, len(info["encoded_vocab"]))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_dir(family) / "tokenizer.json"))
    reference = xgr.TokenizerInfo.from_huggingface(hf, stop_token_ids=info["stop_token_ids"])
    assert ours.vocab_type == reference.vocab_type
    assert ours.add_prefix_space == reference.add_prefix_space
    assert ours.decoded_vocab == reference.decoded_vocab


def test_render_without_the_flag_leaves_guided_decoding_off(tmp_path):
    out = tmp_path / "repo"
    subprocess.run([sys.executable, "-m", "koserve", "repo", "render", "-p", "akallama-70b", "--tokenizer",
                    str(tokenizer_dir("llama3")), "--replay", "--out", str(out)], check=True, capture_output=True,
                   timeout=300)
    params = _params(out / "tensorrt_llm" / "config.pbtxt")
    assert params["guided_decoding_backend"] == "" and params["xgrammar_tokenizer_info_path"] == ""
    assert not (out / "tensorrt_llm" / "xgrammar_tokenizer_info.json").exists()


@pytest.mark.parametrize("guided", [True, False])
def test_render_pytorch_engine_step(tmp_path, guided):
    """--engine-backend pytorch: the LLM-API step's parameters (guided_decoding_backend -> LLM(guided_decoding_backend=
    'xgrammar', tokenizer=tokenizer_dir)), and on CPU the stand-in's tokenizer-info path, read back by the step's own
    settings_from_parameters."""
    from koserve.fixtures import tiny_model_dir
    from koserve.llmapi_engine.model import settings_from_parameters

    out = tmp_path / "repo"
    args = [sys.executable, "-m", "koserve", "repo", "render", "-p", "akallama-70b", "--tokenizer",
            str(tokenizer_dir("llama3")), "--cpu-model", str(tiny_model_dir("llama3")), "--engine-backend", "pytorch",
            "--out", str(out)] + (["--guided-decoding"] if guided else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    params = _params(out / "tensorrt_llm" / "config.pbtxt")
    assert params["llm_runtime"] == "cpu_stand_in"
    assert params["tokenizer_dir"] == str(tokenizer_dir("llama3"))
    info_path = out / "tensorrt_llm" / "xgrammar_tokenizer_info.json"
    assert params["guided_decoding_backend"] == ("xgrammar" if guided else "")
    assert params["xgrammar_tokenizer_info_path"] == (str(info_path) if guided else "")
    assert info_path.exists() is guided
    settings, limits, _ = settings_from_parameters(params)
    assert settings.guided_decoding is guided and limits.guided_decoding is guided
    assert settings.tokenizer_dir == str(tokenizer_dir("llama3"))
