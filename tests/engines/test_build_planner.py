"""The planner against published facts (NVIDIA TensorRT-LLM v0.17 performance tables and model sizes)."""

import json

import pytest

from koserve.engines.planner import format_plan, plan
from koserve.engines.recipe import builtin_recipe_names, load_recipe
from koserve.cli import main

FP8_H100_TP2 = "akallama-70b-fp8-h100-tp2"


def _one_gpu(make_recipe, base, gpu, **extra):
    return make_recipe(base, gpu=gpu, parallelism={"tp": 1, "pp": 1}, calibration={"num_gpus": 4}, **extra)


def _verdicts(p):
    return {(s.isl, s.osl): s.verdict for s in p.scenarios}


def test_llama3_70b_fp8_kv_is_160_kib_per_token():
    p = plan(load_recipe("akallama-70b-fp8-h100-tp4"))
    assert p.kv_bytes_per_token_total == 160 * 1024
    assert p.kv_bytes_per_token_per_gpu == 40 * 1024
    # ~70.6 B parameters; FP8 linears + BF16 embeddings/lm_head ≈ 72.7 GB.
    assert 70.0e9 < p.num_parameters < 71.0e9
    assert 70e9 < p.weight_bytes_total < 75e9


def test_70b_fp8_one_h100_serves_128_128_but_not_2048_2048(make_recipe):
    p = plan(_one_gpu(make_recipe, FP8_H100_TP2, "h100-sxm-80gb"))
    assert p.ok, p.errors
    v = _verdicts(p)
    assert v[(128, 128)] == "ok"
    assert v[(2048, 2048)] == "kv-starved"
    # Little room for KV: ~70 GB of weights on an 80 GB card.
    assert p.kv_cache_bytes_per_gpu < 12e9
    long = p.scenarios[1]
    assert long.kv_concurrency < 32


def test_70b_fp8_one_h200_serves_both(make_recipe):
    p = plan(load_recipe("akallama-70b-fp8-h200-tp1"))
    assert p.ok, p.errors
    assert set(_verdicts(p).values()) == {"ok"}
    assert p.scenarios[1].kv_concurrency > 64


def test_70b_fp8_two_h100_serves_both():
    p = plan(load_recipe(FP8_H100_TP2))
    assert p.ok, p.errors
    assert set(_verdicts(p).values()) == {"ok"}
    # Twice the KV room of one H200 per sequence? At least far above the one-H100 case.
    assert p.scenarios[1].kv_concurrency > 100


def test_70b_bf16_cannot_run_on_one_h100(make_recipe):
    r = make_recipe(FP8_H100_TP2, gpu="h100-sxm-80gb", parallelism={"tp": 1},
                    quantization={"precision": "bf16", "kv_cache_dtype": "bf16"},
                    build={"gemm_plugin": "auto", "use_fp8_context_fmha": "disable", "gemm_swiglu_plugin": "disable"})
    p = plan(r)
    assert not p.ok
    assert any(e.startswith("weights do not fit") and "141" in e for e in p.errors), p.errors
    assert 140e9 < p.weight_bytes_total < 143e9
    assert _verdicts(p) == {(128, 128): "does-not-fit", (2048, 2048): "does-not-fit"}


def test_70b_int4_awq_fits_one_h100(make_recipe):
    p = plan(_one_gpu(make_recipe, "akallama-70b-int4awq-h100-tp2", "h100-sxm-80gb"))
    assert p.ok, p.errors
    assert p.weight_bytes_per_gpu < 42e9
    assert _verdicts(p)[(128, 128)] == "ok"


def test_13b_fp8_fits_one_h100():
    p = plan(load_recipe("komt-13b-fp8-h100-tp1"))
    assert p.ok, p.errors
    assert 13e9 < p.weight_bytes_per_gpu < 15e9
    assert p.kv_bytes_per_token_total == 40 * 40 * 128 * 2  # no GQA: 400 KiB per token in FP8
    assert set(_verdicts(p).values()) == {"ok"}


def test_tp_must_divide_kv_heads(make_recipe):
    p = plan(make_recipe(FP8_H100_TP2, parallelism={"tp": 3}))
    assert any("tp 3 does not divide the 8 KV heads" in e for e in p.errors), p.errors


def test_fp8_refused_on_ampere(make_recipe):
    p = plan(make_recipe(FP8_H100_TP2, gpu="a100-sxm-80gb"))
    assert any(e.startswith("FP8 weights need FP8 tensor cores") and "A100" in e for e in p.errors), p.errors
    assert any("FP8 KV cache" in e for e in p.errors)


def test_int4_refused_before_ampere(make_recipe):
    p = plan(make_recipe("komt-13b-int4awq-l40s-tp1", gpu="v100-sxm-32gb", quantization={"kv_cache_dtype": "int8"}))
    assert any(e.startswith("INT4_AWQ needs") and "V100" in e for e in p.errors), p.errors


def test_int4_awq_with_fp8_kv_on_ada_is_fine():
    assert plan(load_recipe("komt-13b-int4awq-l40s-tp1")).ok


def test_fp8_calibration_of_70b_is_derived_from_bf16_weights_and_activations(make_recipe):
    from koserve.engines.planner import (
        CALIBRATION_GPU_RESERVE_BYTES,
        calibration_activation_bytes,
        calibration_weight_bytes,
    )

    r = make_recipe(FP8_H100_TP2, calibration={"num_gpus": 1})
    weights = r.model_profile.architecture.num_parameters * 2
    assert calibration_weight_bytes(r) == weights and 140e9 < weights < 142e9  # BF16 70B
    a = r.model_profile.architecture
    # fp32 logits of batch x seq tokens dominate the forward-pass activations at batch 1 x 512
    assert calibration_activation_bytes(r) >= 512 * a.vocab_size * 4
    p = plan(r)
    msg = next(e for e in p.errors if "calibration" in e)
    assert "141.1 GB BF16 weights" in msg and "(estimate)" in msg and "calibration.num_gpus to 2" in msg
    assert "serves on 2" in msg and p.calibration_gpus_needed == 2
    # 2 x H100 hold the weights only with the per-GPU reserve counted: the derivation, not a rule of thumb
    usable = 2 * (85_520_809_984 - CALIBRATION_GPU_RESERVE_BYTES)
    assert usable > p.calibration_memory_bytes > weights
    assert plan(make_recipe(FP8_H100_TP2, calibration={"num_gpus": 2})).ok
    # AWQ keeps a layer's inputs for the whole calibration set: more than FP8's amax pass
    awq = load_recipe("akallama-70b-int4awq-h100-tp2")
    assert calibration_activation_bytes(awq) > calibration_activation_bytes(load_recipe(FP8_H100_TP2))


def test_max_seq_len_beyond_positions(make_recipe):
    p = plan(make_recipe("komt-13b-fp8-h100-tp1", limits={"max_seq_len": 8192, "max_input_len": 4096}))
    assert any("max_seq_len 8192 is beyond komt-13b's 4096 positions" in e for e in p.errors), p.errors


def test_kv_concurrency_bounded_by_max_batch_size():
    p = plan(load_recipe("akallama-70b-fp8-h100-tp4"))
    short = p.scenarios[0]
    assert short.kv_concurrency > 256 and short.concurrency == 256


def test_scenario_beyond_engine_limits_names_the_models_position_limit():
    p = plan(load_recipe("komt-13b-fp8-h100-tp1"), [(4000, 1000)])
    assert p.scenarios[0].verdict == "exceeds-engine-limits"
    assert "komt-13b's position limit is 4,096 (more than the model has" in p.scenarios[0].note
    llama3 = plan(load_recipe("akallama-70b-fp8-h100-tp2"), [(8000, 100)]).scenarios[0]
    assert llama3.verdict == "exceeds-engine-limits"
    assert "needs max_input_len ≥ 8000" in llama3.note and "akallama-70b's position limit is 8,192" in llama3.note
    assert "more than the model has" not in llama3.note  # 8,100 fits the model: raise the engine's limits


def test_calibration_line_says_where_calibration_and_serving_run():
    text = format_plan(plan(load_recipe("akallama-70b-fp8-h200-tp1")))
    line = next(ln for ln in text.splitlines() if ln.startswith("calibration"))
    assert "quantize.py calibrates on 2 GPU(s) (calibration.num_gpus; at least" in line
    assert line.endswith("the engine serves on 1"), line


def test_roofline_is_labelled_an_upper_bound_and_is_consistent():
    p = plan(load_recipe("akallama-70b-fp8-h200-tp1"))
    s = p.scenarios[0]
    # One stream can never beat bandwidth / weight bytes.
    assert s.decode_tokens_per_s_per_stream_upper_bound <= 4800e9 / p.weight_bytes_per_gpu
    assert s.decode_tokens_per_s_upper_bound > s.decode_tokens_per_s_per_stream_upper_bound
    assert "upper bound" in format_plan(p)
    assert p.to_dict()["decode_roofline_is_upper_bound"] is True


@pytest.mark.parametrize("name", builtin_recipe_names())
def test_shipped_recipes_are_buildable(name):
    p = plan(load_recipe(name))
    assert p.ok, p.errors
    assert p.scenarios[0].verdict == "ok"


def test_cli_plan_json_and_exit_codes(capsys, tmp_path, make_recipe):
    assert main(["build", "plan", FP8_H100_TP2, "--json", "--isl", "1000", "--osl", "500"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and [(s["isl"], s["osl"]) for s in data["scenarios"]] == [(1000, 500)]
    bad = make_recipe(FP8_H100_TP2, parallelism={"tp": 1}, quantization={"precision": "bf16", "kv_cache_dtype": "bf16"},
                      build={"gemm_plugin": "auto", "use_fp8_context_fmha": "disable", "gemm_swiglu_plugin": "disable"})
    data = bad.model_dump(mode="json")
    data["name"] = "bad"
    path = tmp_path / "bad.yaml"
    import yaml

    path.write_text(yaml.safe_dump(data))
    assert main(["build", "plan", str(path)]) == 1
    out = capsys.readouterr().out
    assert "REFUSED: weights do not fit" in out and "verdict: refused" in out
