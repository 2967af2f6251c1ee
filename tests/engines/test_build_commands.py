"""Generated TensorRT-LLM 1.2.1 command lines, checked flag by flag against that release's argparse
(tests/engines/data/trtllm-1.2-cli-flags.json, a copy of the reference reconstructed from the source)."""

import json

import pytest

from koserve.engines.calibration import prepare_calibration_dir, read_calibration_texts
from koserve.engines.commands import BuildPaths, build_steps, validate_against_flags
from koserve.engines.recipe import builtin_recipe_names, load_recipe, resolve_local_path
from koserve.cli import main
from koserve.errors import ConfigError


def _steps(recipe, tmp_path, **kw):
    return build_steps(recipe, BuildPaths.for_recipe(recipe, workdir=tmp_path / "w", checkpoint_dir="/models/x", **kw))


def _args(step):
    argv = list(step.argv)
    out = {}
    for i, tok in enumerate(argv):
        if tok.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[tok] = nxt if nxt is not None and not nxt.startswith("--") else True
    return out


def _variants(make_recipe):
    base = "komt-13b-fp8-h100-tp1"
    off = {"gemm_plugin": "auto", "use_fp8_context_fmha": "disable", "gemm_swiglu_plugin": "disable"}
    return {
        "bf16": make_recipe(base, quantization={"precision": "bf16", "kv_cache_dtype": "bf16"}, build=off),
        "int8_wo+int8kv": make_recipe(base, quantization={"precision": "int8_wo", "kv_cache_dtype": "int8"},
                                      build={**off, "use_fused_mlp": "disable"}),
        "int4_wo": make_recipe(base, quantization={"precision": "int4_wo", "kv_cache_dtype": "bf16"},
                               build={**off, "use_fused_mlp": "disable"}),
        "fp8-tp2-pp2": make_recipe("akallama-70b-fp8-h100-tp4", parallelism={"tp": 2, "pp": 2}),
    }


@pytest.mark.parametrize("name", builtin_recipe_names())
def test_every_flag_and_choice_exists_in_trtllm_1_2(name, trtllm_flags, tmp_path):
    recipe = load_recipe(name)
    steps = _steps(recipe, tmp_path)
    assert validate_against_flags(steps, trtllm_flags) == []
    assert [s.name for s in steps] == ["quantize", "checkpoint" if recipe.backend == "pytorch" else "build"]


def test_variants_validate_too(make_recipe, trtllm_flags, tmp_path):
    for label, recipe in _variants(make_recipe).items():
        steps = _steps(recipe, tmp_path)
        assert validate_against_flags(steps, trtllm_flags) == [], label


def test_validator_catches_mistakes(trtllm_flags, tmp_path):
    from dataclasses import replace

    step = _steps(load_recipe("komt-13b-fp8-h100-tp1"), tmp_path)[-1]
    bad = replace(step, argv=step.argv + ("--tp_size", "2", "--gemm_plugin", "fp4", "--use_fused_mlp"))
    problems = validate_against_flags([bad], trtllm_flags)
    assert any("no flag --tp_size" in p for p in problems)
    assert any("'fp4' not in" in p for p in problems)
    assert any("--gemm_plugin given twice" in p for p in problems)
    assert any("--use_fused_mlp needs a value" in p for p in problems)


def test_fp8_quantize_command(tmp_path):
    recipe = load_recipe("akallama-70b-fp8-h100-tp4")
    q, b = _steps(recipe, tmp_path, examples_dir="/src/TensorRT-LLM/examples")
    assert q.argv[:2] == ("python3", "/src/TensorRT-LLM/examples/quantization/quantize.py")
    a = _args(q)
    assert a["--qformat"] == "fp8" and a["--kv_cache_dtype"] == "fp8" and a["--dtype"] == "bfloat16"
    assert a["--tp_size"] == "4" and a["--pp_size"] == "1"
    assert a["--calib_size"] == "64" and a["--calib_max_seq_length"] == "512"
    assert a["--calib_dataset"] == str(resolve_local_path("recipes/calibration/ko"))
    assert "--awq_block_size" not in a
    assert a["--model_dir"] == "/models/x" and a["--output_dir"] == str(tmp_path / "w" / "trtllm_checkpoint")
    assert q.gpus == 4


def test_trtllm_build_has_no_tp_and_follows_the_recipe(tmp_path):
    recipe = load_recipe("akallama-70b-fp8-h100-tp4")
    b = _steps(recipe, tmp_path)[-1]
    a = _args(b)
    assert b.argv[0] == "trtllm-build"
    assert not any(k in a for k in ("--tp_size", "--pp_size", "--world_size"))
    assert a["--checkpoint_dir"] == str(tmp_path / "w" / "trtllm_checkpoint")
    assert (a["--max_batch_size"], a["--max_input_len"], a["--max_seq_len"], a["--max_num_tokens"]) == (
        "256", "7168", "8192", "8192")
    assert a["--gemm_plugin"] == "disable"
    assert a["--use_fp8_context_fmha"] == "enable" and a["--use_paged_context_fmha"] == "enable"
    assert a["--use_fused_mlp"] == "enable" and a["--gemm_swiglu_plugin"] == "fp8"
    assert a["--multiple_profiles"] == "enable" and a["--kv_cache_type"] == "paged"
    assert a["--workers"] == "4"


def test_int4_awq_uses_block_size_128(tmp_path):
    q = _steps(load_recipe("komt-13b-int4awq-l40s-tp1"), tmp_path)[0]
    a = _args(q)
    assert a["--qformat"] == "int4_awq" and a["--awq_block_size"] == "128" and a["--kv_cache_dtype"] == "fp8"


def test_convert_paths(make_recipe, tmp_path):
    v = _variants(make_recipe)
    conv, build = _steps(v["bf16"], tmp_path)
    assert conv.argv[1].endswith("examples/models/core/llama/convert_checkpoint.py")
    a = _args(conv)
    assert a["--dtype"] == "bfloat16" and "--use_weight_only" not in a and "--int8_kv_cache" not in a
    assert conv.gpus == 0
    assert _args(build)["--gemm_plugin"] == "auto"
    a = _args(_steps(v["int8_wo+int8kv"], tmp_path)[0])
    assert a["--use_weight_only"] is True and a["--weight_only_precision"] == "int8"
    assert a["--int8_kv_cache"] is True and a["--calib_dataset"].endswith("recipes/calibration/ko")
    a = _args(_steps(v["int4_wo"], tmp_path)[0])
    assert a["--weight_only_precision"] == "int4"
    a = _args(_steps(v["fp8-tp2-pp2"], tmp_path)[0])
    assert a["--tp_size"] == "2" and a["--pp_size"] == "2"


def test_english_default_and_hub_checkpoint(make_recipe, tmp_path):
    r = make_recipe("komt-13b-fp8-h100-tp1", calibration={"dataset": "cnn_dailymail"})
    steps = build_steps(r, BuildPaths.for_recipe(r, workdir=tmp_path))
    a = _args(steps[0])
    assert a["--calib_dataset"] == "cnn_dailymail"
    assert a["--model_dir"] == "davidkim205/komt-Llama-2-13b-hf"  # quantize.py resolves Hub ids itself


def test_local_korean_text_file_becomes_a_dataset_folder(make_recipe, tmp_path, trtllm_flags):
    text = tmp_path / "corpus.txt"
    text.write_text("첫 번째 문단입니다.\n두 줄로 되어 있어요.\n\n두 번째 문단입니다.\n\n\n세 번째.\n", encoding="utf-8")
    r = make_recipe("komt-13b-fp8-h100-tp1", calibration={"dataset": str(text)})
    paths = BuildPaths.for_recipe(r, workdir=tmp_path / "w", checkpoint_dir="/m")
    steps = build_steps(r, paths)
    assert [s.name for s in steps] == ["calibration-data", "quantize", "build"]
    assert _args(steps[1])["--calib_dataset"] == str(paths.calibration_dir)
    assert validate_against_flags(steps, trtllm_flags) == []
    out = prepare_calibration_dir(text, paths.calibration_dir)
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in rows] == ["첫 번째 문단입니다.\n두 줄로 되어 있어요.", "두 번째 문단입니다.", "세 번째."]


def test_shipped_korean_sample():
    texts = read_calibration_texts(resolve_local_path("recipes/calibration/ko"))
    assert len(texts) == 64
    hangul = sum(1 for t in texts for ch in t if "\uac00" <= ch <= "\ud7a3")
    assert hangul > 3000
    assert len(set(texts)) == 64


def test_bad_calibration_files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "좋아요"}\n{"body": "no text"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: each line needs a non-empty \"text\""):
        read_calibration_texts(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no .jsonl"):
        read_calibration_texts(empty)


def test_cli_commands(capsys):
    assert main(["build", "commands", "komt-13b-int4awq-l40s-tp1", "--checkpoint-dir", "/m", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["step"] for d in data] == ["quantize", "build"]
    assert data[0]["argv"][data[0]["argv"].index("--qformat") + 1] == "int4_awq"
    assert main(["build", "commands", "komt-13b-int4awq-l40s-tp1", "--checkpoint-dir", "/m"]) == 0
    out = capsys.readouterr().out
    assert "trtllm-build \\\n    --checkpoint_dir" in out and "--awq_block_size 128" in out
