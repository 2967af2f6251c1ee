"""Every rendered ``tensorrt_llm`` config (GPU, every shipped recipe) satisfies the C++ backend's contract.

The contract (tests/engines/data/trtllm-1.2.1-backend-contract.json) holds facts read from NVIDIA's source (cited
there per fact): parameters read with no fallback, input names the backend recognises, NVIDIA's declarations of
each input/output, and the ensemble/BLS mappings into the engine. The rendered configs are parsed with Triton's own
protobuf schema (tritonclient's ``model_config_pb2``), not by string matching.
"""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from koserve.engines.recipe import builtin_recipe_names, load_recipe
from koserve.fixtures import tokenizer_dir
from koserve.repo.render import RenderOptions, render_repository

RECIPES = builtin_recipe_names()
_BOOL_WORDS = {"True", "true", "TRUE", "1", "False", "false", "FALSE", "0"}
_DTYPE = model_config_pb2.DataType


def parse_config(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def render_gpu(recipe_name, tmp_path, engine_dir_for, **options):
    recipe = load_recipe(recipe_name)
    engine = engine_dir_for(recipe, tmp_path / "engine")
    family = recipe.model_profile.tokenizer_family
    opts = RenderOptions(profile=recipe.profile, tokenizer_dir=tokenizer_dir(family), out=tmp_path / "repo",
                         engine_dir=engine).with_overrides(**options)
    repo = render_repository(opts)
    return repo, engine


def params(cfg) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def test_recipes_are_shipped():
    assert len(RECIPES) >= 6


@pytest.mark.parametrize("recipe_name", RECIPES)
def test_rendered_engine_config_satisfies_backend_contract(recipe_name, tmp_path, engine_dir_for, backend_contract):
    repo, engine = render_gpu(recipe_name, tmp_path, engine_dir_for)
    cfg = parse_config(repo.path / "tensorrt_llm" / "config.pbtxt")
    assert cfg.backend == "tensorrtllm" and cfg.name == "tensorrt_llm"
    assert cfg.max_batch_size == load_recipe(recipe_name).limits.max_batch_size
    assert cfg.model_transaction_policy.decoupled is True  # default, like NVIDIA's decoupled_mode for streaming

    p = params(cfg)
    # parameters read with no fallback: a missing key stops the model from loading
    for entry in backend_contract["parameters"]["unguarded"]:
        assert entry["name"] in p, f"{recipe_name}: missing {entry['name']} -> {entry['missing']}"
        if "allowed" in entry:
            assert p[entry["name"]] in entry["allowed"]
    assert p["gpt_model_path"] == str(engine.resolve())
    assert p["guided_decoding_backend"] in ("", "xgrammar")
    assert p["xgrammar_tokenizer_info_path"] == ""  # no guided decoding: no tokenizer-info file needed

    # guarded parameters: a value the backend cannot parse silently falls back to its default
    guarded = backend_contract["parameters"]["guarded"]
    for name, value in p.items():
        if name in guarded["bool"]:
            assert value in _BOOL_WORDS, f"{name}={value!r} is not a bool the backend parses"
        elif name in guarded["int"]:
            int(value)
        elif name in guarded["float"]:
            float(value)
        elif name in guarded["string"] and isinstance(guarded["string"][name], list):
            assert value in guarded["string"][name], f"{name}={value!r} not in {guarded['string'][name]}"
    assert not set(p) & set(guarded["rejected"])
    known = ({e["name"] for e in backend_contract["parameters"]["unguarded"]} | {"gpt_model_path", "encoder_model_path"}
             | {n for kind in ("bool", "int", "float", "string", "int_list") for n in guarded[kind]}
             | {"FORCE_CPU_ONLY_INPUT_TENSORS"})
    assert set(p) <= known, f"parameters the backend never reads: {sorted(set(p) - known)}"
    assert float(p["kv_cache_free_gpu_mem_fraction"]) == load_recipe(recipe_name).serving.kv_cache_free_gpu_mem_fraction

    # inputs: every input NVIDIA's template declares (NVIDIA's clients send them: end_to_end_test.py sends
    # decoder_input_ids), declared as NVIDIA declares them; names the backend recognises, or NVIDIA's own
    # declared-but-never-read ones
    recognised = set(backend_contract["inputs"]["recognised"])
    not_read = set(backend_contract["inputs"]["declared_not_read"]["names"])
    upstream = backend_contract["inputs"]["template"]["declarations"]
    names = [i.name for i in cfg.input]
    assert len(names) == len(set(names))
    assert set(names) == set(upstream), (sorted(set(upstream) - set(names)), sorted(set(names) - set(upstream)))
    assert not {"min_length", "random_seed"} & set(names), "v0.19 names: the 1.x backend ignores them"
    assert not not_read & recognised
    for inp in cfg.input:
        assert inp.name in recognised | not_read, f"{inp.name} is silently ignored by the 1.x backend"
        decl = upstream[inp.name]
        assert _DTYPE.Name(inp.data_type) == decl["data_type"], inp.name
        assert list(inp.dims) == decl["dims"], inp.name
        if decl["reshape"] is None:
            assert not inp.HasField("reshape"), inp.name
        else:
            assert inp.HasField("reshape") and list(inp.reshape.shape) == decl["reshape"], inp.name
        assert inp.optional == decl["optional"], inp.name
        assert inp.allow_ragged_batch == decl.get("allow_ragged_batch", False), inp.name
    for name in backend_contract["inputs"]["required_in_request"]:
        if name != "source":
            assert name in names
    for name in ("min_tokens", "seed", "streaming", "stop", "end_id", "stop_words_list"):
        assert name in names

    # outputs
    out_decl = backend_contract["outputs"]["declarations"]
    outs = {o.name: o for o in cfg.output}
    for name in backend_contract["outputs"]["must_be_requested"]:
        assert name in outs
    for name, out in outs.items():
        assert _DTYPE.Name(out.data_type) == out_decl[name]["data_type"] and list(out.dims) == out_decl[name]["dims"]


@pytest.mark.parametrize("recipe_name", RECIPES[:1])
def test_decoupled_is_a_render_option(recipe_name, tmp_path, engine_dir_for):
    repo, _ = render_gpu(recipe_name, tmp_path, engine_dir_for, engine_decoupled=False)
    cfg = parse_config(repo.path / "tensorrt_llm" / "config.pbtxt")
    assert cfg.model_transaction_policy.decoupled is False


def test_render_cli_engine_not_decoupled(tmp_path, engine_dir_for):
    from koserve.cli import build_parser

    recipe = load_recipe(RECIPES[0])
    engine = engine_dir_for(recipe, tmp_path / "engine")
    args = build_parser().parse_args([
        "repo", "render", "--profile", recipe.profile, "--tokenizer",
        str(tokenizer_dir(recipe.model_profile.tokenizer_family)), "--engine", str(engine), "--out",
        str(tmp_path / "repo"), "--engine-not-decoupled",
    ])
    assert args.func(args) == 0
    assert parse_config(tmp_path / "repo" / "tensorrt_llm" / "config.pbtxt").model_transaction_policy.decoupled is False


def test_cpu_stand_in_not_decoupled_and_the_bls_follows(tmp_path):
    """--engine-not-decoupled applies to the CPU stand-in too; the BLS follows the engine unless told, and a
    decoupled BLS over a non-decoupled engine (it could not stream) is refused naming both."""
    from koserve.errors import ConfigError

    def render(out, **options):
        return render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                               out=tmp_path / out, replay=True, **options))

    def decoupled(repo, model):
        return parse_config(repo.path / model / "config.pbtxt").model_transaction_policy.decoupled

    repo = render("a", engine_decoupled=False)
    assert (decoupled(repo, "tensorrt_llm"), decoupled(repo, "tensorrt_llm_bls")) == (False, False)
    assert parse_config(repo.path / "tensorrt_llm" / "config.pbtxt").backend == "python"
    repo = render("b")
    assert (decoupled(repo, "tensorrt_llm"), decoupled(repo, "tensorrt_llm_bls")) == (True, True)
    repo = render("c", bls_decoupled=False)
    assert (decoupled(repo, "tensorrt_llm"), decoupled(repo, "tensorrt_llm_bls")) == (True, False)
    with pytest.raises(ConfigError, match=r"bls_decoupled=true\) conflicts with tensorrt_llm not decoupled"):
        render("d", engine_decoupled=False, bls_decoupled=True)
    assert not (tmp_path / "d").exists()


def test_render_cli_engine_not_decoupled_on_cpu(tmp_path):
    from koserve.cli import build_parser

    args = build_parser().parse_args([
        "repo", "render", "--profile", "komt-13b", "--tokenizer", str(tokenizer_dir("llama2")), "--replay",
        "--out", str(tmp_path / "repo"), "--engine-not-decoupled",
    ])
    assert args.func(args) == 0
    for model in ("tensorrt_llm", "tensorrt_llm_bls"):
        cfg = parse_config(tmp_path / "repo" / model / "config.pbtxt")
        assert cfg.model_transaction_policy.decoupled is False, model


def _engine_step(ensemble_cfg):
    steps = [s for s in ensemble_cfg.ensemble_scheduling.step if s.model_name == "tensorrt_llm"]
    assert len(steps) == 1
    return steps[0]


@pytest.mark.parametrize("recipe_name", RECIPES[:1])
def test_ensemble_maps_into_engine_inputs_the_backend_reads(recipe_name, tmp_path, engine_dir_for, backend_contract):
    repo, _ = render_gpu(recipe_name, tmp_path, engine_dir_for)
    engine_cfg = parse_config(repo.path / "tensorrt_llm" / "config.pbtxt")
    declared = {i.name for i in engine_cfg.input}
    step = _engine_step(parse_config(repo.path / "ensemble" / "config.pbtxt"))
    upstream_map = backend_contract["ensemble_into_engine"]["input_map"]
    for engine_input in step.input_map:
        assert engine_input in declared, f"ensemble feeds {engine_input}, which tensorrt_llm does not declare"
        assert engine_input in upstream_map, f"NVIDIA's ensemble has no {engine_input} step input"
    # engine-side names are 1.x (as NVIDIA's 1.x ensemble maps them); the v0.19 names would be ignored on GPU
    assert "min_tokens" in step.input_map and "seed" in step.input_map
    assert not {"min_length", "random_seed"} & set(step.input_map)
    assert step.input_map["streaming"] and step.input_map["request_output_len"]
    outs = {o.name for o in engine_cfg.output}
    assert set(step.output_map) <= outs


def test_bls_engine_request_names_are_backend_inputs(backend_contract):
    from koserve.triton_models.bls import ENGINE_SAMPLING

    recognised = set(backend_contract["inputs"]["recognised"])
    engine_names = {name for name, _ in ENGINE_SAMPLING.values()}
    assert engine_names <= recognised, sorted(engine_names - recognised)
    bls_map = backend_contract["bls_into_engine"]["name_map"]
    assert {bls_map["min_tokens"], bls_map["seed"]} <= engine_names
    assert not {"min_length", "random_seed"} & engine_names


def test_cpu_stand_in_declares_the_same_engine_inputs(tmp_path, engine_dir_for, backend_contract):
    """One contract for both engines: the stand-in declares the inputs the GPU config declares, under the same
    names, dtypes, dims and reshape, and no name the 1.x backend would ignore (Triton itself then refuses an
    undeclared input such as ``min_length`` on CPU, where the C++ backend would drop it silently)."""
    gpu_repo, _ = render_gpu(RECIPES[0], tmp_path / "gpu", engine_dir_for)
    cpu_repo = render_repository(RenderOptions(profile="akallama-70b", tokenizer_dir=tokenizer_dir("llama3"),
                                               out=tmp_path / "cpu", replay=True))
    gpu = {i.name: i for i in parse_config(gpu_repo.path / "tensorrt_llm" / "config.pbtxt").input}
    cpu = {i.name: i for i in parse_config(cpu_repo.path / "tensorrt_llm" / "config.pbtxt").input}
    recognised = set(backend_contract["inputs"]["recognised"])
    not_read = set(backend_contract["inputs"]["declared_not_read"]["names"])
    upstream = backend_contract["inputs"]["template"]["declarations"]
    assert set(cpu) <= recognised | not_read, sorted(set(cpu) - recognised - not_read)
    assert set(gpu) == set(cpu) == set(upstream), (sorted(set(gpu) ^ set(cpu)), sorted(set(cpu) ^ set(upstream)))
    for name, g in gpu.items():
        c = cpu[name]
        assert (c.data_type, list(c.dims), list(c.reshape.shape), c.HasField("reshape"), c.allow_ragged_batch) == \
               (g.data_type, list(g.dims), list(g.reshape.shape), g.HasField("reshape"), g.allow_ragged_batch), name
        # optional as NVIDIA's, except input_ids: the stand-in has no encoder_input_features alternative
        assert c.optional == (g.optional and name != "input_ids"), name
    # every input the stand-in does not implement is either refused by name or ignored where the C++ backend is
    from koserve.cpu_engine import triton as stand_in

    handled = (set(stand_in._UNSUPPORTED_UNLESS) | set(stand_in._UNSUPPORTED_WHEN_GIVEN)
               | set(stand_in.IGNORED_INPUTS))
    implemented = {"input_ids", "input_lengths", "request_output_len", "end_id", "pad_id", "stop_words_list",
                   "bad_words_list", "temperature", "runtime_top_k", "runtime_top_p", "repetition_penalty",
                   "min_tokens", "presence_penalty", "frequency_penalty", "seed",
                   "return_log_probs", "exclude_input_in_output", "stop", "streaming",
                   "guided_decoding_guide_type", "guided_decoding_guide"}
    assert set(cpu) == handled | implemented, (sorted(set(cpu) - handled - implemented),
                                               sorted((handled | implemented) - set(cpu)))
    assert not handled & implemented
    assert not_read | set(backend_contract["inputs"]["decoder_only_ignored"]["names"]) <= set(stand_in.IGNORED_INPUTS)
    step = _engine_step(parse_config(cpu_repo.path / "ensemble" / "config.pbtxt"))
    assert set(step.input_map) <= set(cpu)
