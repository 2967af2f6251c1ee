"""``koserve repo render``: the CPU and GPU repositories, limits read from the engine, clear errors, the BLS stream
options from the CLI, postprocessing's dynamic-batching block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from koserve.errors import ConfigError
from koserve.fixtures import tiny_model_dir, tokenizer_dir
from koserve.repo.render import RenderOptions, read_repo_info, render_repository


# --- render ---------------------------------------------------------------------------------------------------
def test_render_cpu_repository(tmp_path):
    r = render_repository(RenderOptions(profile="komt-13b", tokenizer_dir=tokenizer_dir("llama2"), out=tmp_path / "r",
                                        cpu_model_dir=tiny_model_dir("llama2"), max_seq_len=256))
    assert r.models == ["ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls"]
    cfg = (r.path / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'name: "tensorrt_llm"' in cfg and 'backend: "python"' in cfg and "{{" not in cfg
    assert 'string_value: "255"' in (r.path / "preprocessing" / "config.pbtxt").read_text()  # max_input_len
    assert read_repo_info(r.path)["kind"] == "cpu"
    bls = (r.path / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    assert 'name: "num_output_tokens"' in bls
    assert 'key: "stream_send_share"\n  value: { string_value: "0.25" }' in bls
    assert 'key: "stream_max_interval_us"\n  value: { string_value: "100000" }' in bls
    assert 'key: "stream_max_wait_gaps"\n  value: { string_value: "1.5" }' in bls
    with pytest.raises(ConfigError, match="already exists"):
        render_repository(RenderOptions(profile="komt-13b", tokenizer_dir=tokenizer_dir("llama2"),
                                        out=tmp_path / "r", replay=True))


def _fake_engine(path: Path, tp=2, pp=1, ranks=None):
    path.mkdir()
    cfg = {"version": "1.2.1", "pretrained_config": {"mapping": {"world_size": tp * pp, "tp_size": tp, "pp_size": pp}},
           "build_config": {"max_batch_size": 32, "max_input_len": 3072, "max_seq_len": 4096}}
    (path / "config.json").write_text(json.dumps(cfg))
    for r in range(tp * pp if ranks is None else ranks):
        (path / f"rank{r}.engine").write_bytes(b"")
    return path


def test_render_gpu_repository_reads_engine_limits(tmp_path):
    engine = _fake_engine(tmp_path / "engine")
    r = render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                        out=tmp_path / "r", engine_dir=engine))
    cfg = (r.path / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'backend: "tensorrtllm"' in cfg and "max_batch_size: 32" in cfg
    assert f'string_value: "{engine}"' in cfg and "enable_kv_cache_reuse" in cfg
    assert 'string_value: "3072"' in (r.path / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    assert r.world_size == 2 and r.kind == "gpu"


def test_render_errors_are_clear(tmp_path):
    engine = _fake_engine(tmp_path / "engine")
    tok = tokenizer_dir("llama3")
    with pytest.raises(ConfigError, match="disagrees with the engine's max_seq_len 4096"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "a",
                                        engine_dir=engine, max_seq_len=8192))
    with pytest.raises(ConfigError, match="exactly one of"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "b",
                                        engine_dir=engine, replay=True))
    with pytest.raises(ConfigError, match="rank1.engine"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "c",
                                        engine_dir=_fake_engine(tmp_path / "e2", ranks=1)))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tmp_path, out=tmp_path / "d",
                                        replay=True))
    with pytest.raises(ConfigError, match=r"bls_stream_send_share must be in \[0, 1\], got 1.5"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "f", replay=True,
                                        bls_stream_send_share=1.5))
    with pytest.raises(ConfigError, match=r"bls_stream_max_wait_gaps must be in \[0, 1000\], got -1"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tok, out=tmp_path / "g", replay=True,
                                        bls_stream_max_wait_gaps=-1))
    with pytest.raises(ConfigError, match="wrong tokenizer"):
        render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama2"),
                                        out=tmp_path / "e", replay=True))


def test_render_cli_sets_the_bls_stream_options(tmp_path, capsys):
    from koserve.cli import main

    out = tmp_path / "r"
    assert main(["repo", "render", "--profile", "komt-13b", "--tokenizer", str(tokenizer_dir("llama2")), "--replay",
                 "--out", str(out), "--bls-stream-send-share", "0.5", "--bls-stream-max-interval-us", "20000",
                 "--bls-stream-max-wait-gaps", "0"]) == 0
    assert "rendered CPU repository" in capsys.readouterr().out
    bls = (out / "tensorrt_llm_bls" / "config.pbtxt").read_text()
    assert 'key: "stream_send_share"\n  value: { string_value: "0.5" }' in bls
    assert 'key: "stream_max_interval_us"\n  value: { string_value: "20000" }' in bls
    assert 'key: "stream_max_wait_gaps"\n  value: { string_value: "0.0" }' in bls
    # an option left out keeps the render default
    assert "max_queue_delay_microseconds: 1000" in (out / "postprocessing" / "config.pbtxt").read_text()


def _render(tmp_path, **kw):
    return render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                           out=tmp_path / "r", replay=True, force=True, **kw))


def test_render_postprocessing_dynamic_batching_block(tmp_path):
    body = lambda r: (r.path / "postprocessing" / "config.pbtxt").read_text().split("\nname:", 1)[1]  # no comments
    assert "dynamic_batching" not in body(_render(tmp_path, postprocessing_max_queue_delay_us=0))
    assert "max_queue_delay_microseconds: 1000\n" in body(_render(tmp_path))  # the default
    r = _render(tmp_path, postprocessing_max_queue_delay_us=250)
    text = (r.path / "postprocessing" / "config.pbtxt").read_text()
    assert "dynamic_batching {\n  max_queue_delay_microseconds: 250\n}" in text and "{{" not in text
    assert read_repo_info(r.path)["context"]["postprocessing_max_queue_delay_us"] == 250
    for other in ("preprocessing", "ensemble", "tensorrt_llm_bls"):
        assert "max_queue_delay_microseconds" not in (r.path / other / "config.pbtxt").read_text()
    with pytest.raises(ConfigError, match="postprocessing_max_queue_delay_us"):
        _render(tmp_path, postprocessing_max_queue_delay_us=-1)
