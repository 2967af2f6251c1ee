"""Recipe validation: shipped recipes load; mistakes are refused with the field named."""

import pytest
import yaml

from koserve.engines.recipe import EngineRecipe, builtin_recipe_names, load_recipe, parse_recipe
from koserve.errors import ConfigError

SHIPPED = {
    "akallama-70b-fp8-h100-tp4", "akallama-70b-fp8-h100-tp2", "akallama-70b-int4awq-h100-tp2",
    "akallama-70b-fp8-h200-tp1", "komt-13b-fp8-h100-tp1", "komt-13b-int4awq-l40s-tp1",
}


def _data(name="akallama-70b-fp8-h100-tp2"):
    return load_recipe(name).model_dump(mode="json")


def test_shipped_recipes_present_and_valid():
    assert SHIPPED <= set(builtin_recipe_names())
    for name in SHIPPED:
        r = load_recipe(name)
        assert isinstance(r, EngineRecipe) and r.name == name
        assert r.trtllm_version == "1.2.1"
        assert r.limits.max_num_tokens == 8192
        assert r.build.multiple_profiles == "enable" and r.build.use_paged_context_fmha == "enable"
        assert r.model_profile.name == r.profile
        assert r.calibration.dataset == "recipes/calibration/ko"  # Korean by default
        for text in r.why.values():
            assert "\n" not in text.strip() and len(text) < 140


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_hopper_fp8_guidance(name):
    r = load_recipe(name)
    if r.quantization.precision == "fp8":
        assert r.quantization.kv_cache_dtype == "fp8"
        assert r.build.gemm_plugin == "disable"
        assert r.build.use_fp8_context_fmha == "enable"
        assert r.build.use_fused_mlp == "enable" and r.build.gemm_swiglu_plugin == "fp8"
    else:
        assert r.build.gemm_plugin == "auto"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["why"].pop("quantization.precision"), "missing: quantization.precision"),
        (lambda d: d["why"].__setitem__("limits.max_batchsize", "typo"), "limits.max_batchsize"),
        (lambda d: d["why"].__setitem__("gpu", "two\nlines"), "one line"),
        (lambda d: d.__setitem__("gpu", "h100"), "unknown GPU 'h100'"),
        (lambda d: d["limits"].__setitem__("max_input_len", 8192), "must be below max_seq_len"),
        (lambda d: d["quantization"].__setitem__("precision", "int4_awq"), "use_fp8_context_fmha enable needs"),
        (lambda d: d["quantization"].__setitem__("precision", "fp4"), "quantization.precision"),
        (lambda d: d["build"].__setitem__("use_paged_context_fmha", "disable"), "requires use_paged_context_fmha"),
        (lambda d: d.__setitem__("tp_size", 2), "tp_size"),
        (lambda d: d.__setitem__("profile", "no-such-profile"), "unknown profile"),
    ],
)
def test_invalid_recipes_are_refused(mutate, message):
    data = _data()
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        parse_recipe(data, "test.yaml")
    assert message in str(exc.value)


def test_fp8_kv_needs_quantize_path():
    data = _data()
    data["quantization"] = {"precision": "int8_wo", "kv_cache_dtype": "fp8"}
    with pytest.raises(ConfigError, match="kv_cache_dtype fp8 needs ModelOpt"):
        parse_recipe(data)


def test_load_by_path_checks_name(tmp_path):
    path = tmp_path / "other-name.yaml"
    path.write_text(yaml.safe_dump(_data()))
    with pytest.raises(ConfigError, match="must match the file name"):
        load_recipe(str(path))
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_recipe("no-such-recipe")


def test_recipe_hash_is_stable_and_sensitive():
    a = load_recipe("komt-13b-fp8-h100-tp1")
    data = a.model_dump(mode="json")
    assert parse_recipe(data).sha256() == a.sha256()
    data["limits"]["max_batch_size"] = 64
    assert parse_recipe(data).sha256() != a.sha256()
