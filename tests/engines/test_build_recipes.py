"""Recipe validation: shipped recipes load; mistakes are refused with the field named."""

import pytest
import yaml

from koserve.cli import main
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
    with pytest.raises(ConfigError, match="must match the file name 'other-name' .rename the file to "):
        load_recipe(str(path))
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_recipe("no-such-recipe")


def test_recipe_hash_is_stable_and_sensitive():
    a = load_recipe("komt-13b-fp8-h100-tp1")
    data = a.model_dump(mode="json")
    assert parse_recipe(data).sha256() == a.sha256()
    data["limits"]["max_batch_size"] = 64
    assert parse_recipe(data).sha256() != a.sha256()


def test_fields_left_at_their_default_need_no_why():
    data = _data("komt-13b-fp8-h100-tp1")
    data["parallelism"] = {"tp": 1, "pp": 1}  # the defaults
    for key in ("parallelism.tp", "parallelism.pp", "build.multiple_profiles", "build.use_paged_context_fmha"):
        data["why"].pop(key)
    assert parse_recipe(data).parallelism.tp == 1
    data["parallelism"]["tp"] = 2  # a choice again: it needs its why
    with pytest.raises(ConfigError, match="differs from the default needs a one-line why; missing: parallelism.tp"):
        parse_recipe(data)


def test_the_minimal_recipe_of_docs_build_md_loads_and_plans(tmp_path, capsys):
    """docs/build.md's "Your own recipe": a 70B BF16 engine on two H100s, every other field at its default, whys
    only for its choices; the plan is what the page says."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "build.md").read_text(encoding="utf-8")
    section = text.split("### Your own recipe", 1)[1].split("\n### ", 1)[0]
    recipe_yaml = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
    path = tmp_path / "akallama-70b-bf16-h100-tp2.yaml"
    path.write_text(recipe_yaml)
    recipe = load_recipe(path)
    assert recipe.build.use_fused_mlp == "enable" and recipe.calibration.num_gpus is None
    assert set(recipe.why) == {"checkpoint", "gpu", "parallelism.tp", "quantization.precision",
                               "quantization.kv_cache_dtype", "limits.max_batch_size", "limits.max_input_len",
                               "limits.max_seq_len"}
    assert main(["build", "plan", str(path)]) == 0
    verdicts = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()
                if re.match(r"\d+/\d+ ", line)}
    assert verdicts == {"128/128": "ok", "2048/2048": "kv-starved"}
    assert "`ok` at 128/128, `kv-starved` at 2048/2048" in section


def test_build_new_writes_a_valid_copy_to_edit(tmp_path, capsys):
    assert main(["build", "new", "--from", "komt-13b-fp8-h100-tp1", "my-komt", "--out", str(tmp_path)]) == 0
    path = tmp_path / "my-komt.yaml"
    assert f"wrote {path} (a copy of komt-13b-fp8-h100-tp1); edit it, then: koserve build plan {path}" in \
        capsys.readouterr().out
    copy = load_recipe(path)
    original = load_recipe("komt-13b-fp8-h100-tp1")
    assert copy.name == "my-komt" and copy.model_dump(exclude={"name"}) == original.model_dump(exclude={"name"})
    assert "# komt-Llama-2-13B, FP8 weights" in path.read_text()  # the comments come along
    assert main(["build", "new", "--from", "komt-13b-fp8-h100-tp1", "my-komt", "--out", str(tmp_path)]) == 2
    assert "exists; choose another NAME" in capsys.readouterr().err
    assert main(["build", "new", "--from", str(path), "My Komt", "--out", str(tmp_path)]) == 2
    assert "recipe name 'My Komt'" in capsys.readouterr().err
    assert main(["build", "new", "--from", "nope", "x", "--out", str(tmp_path)]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_build_gpus_lists_the_keys_recipes_take(capsys):
    from koserve.engines.gpus import GPUS

    assert main(["build", "gpus"]) == 0
    out = capsys.readouterr().out
    keys = [line.split()[0] for line in out.splitlines()[1:]]
    assert keys == list(GPUS)
    assert "h100-sxm-80gb    H100 80GB SXM" in out and "fp8" in out.splitlines()[1]
    data = _data()
    data["gpu"] = "h100"
    with pytest.raises(ConfigError, match="`koserve build gpus` describes them"):
        parse_recipe(data)
