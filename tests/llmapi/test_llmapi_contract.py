"""The engine step's LLM API calls and the CPU stand-in's LLM API object against the facts recorded from NVIDIA's
source (tests/engines/data/trtllm-1.2.1-llmapi-contract.json, cited per fact by commit)."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest

from koserve.cpu_engine import llmapi as cpu_llmapi
from koserve.llmapi_engine import runtime
from koserve.llmapi_engine.request import GenerationRequest
from koserve.guided.spec import GUIDE_TYPES, GuidedDecoding
from koserve.llmapi_engine.sampling import LlmSettings, guided_decoding_kwargs, llm_kwargs, sampling_kwargs

CONTRACT_PATH = Path(__file__).resolve().parents[1] / "engines" / "data" / "trtllm-1.2.1-llmapi-contract.json"


@pytest.fixture(scope="module")
def contract() -> dict:
    return json.loads(CONTRACT_PATH.read_text(encoding="utf-8"))


def _every_option() -> GenerationRequest:
    return GenerationRequest(
        prompt_token_ids=(1, 2, 3), max_tokens=5, end_ids=(2, 7), pad_id=0, stop_words=((5, 6),),
        bad_token_ids=(9,), temperature=0.7, top_k=40, top_p=0.9, seed=3, repetition_penalty=1.1,
        presence_penalty=0.1, frequency_penalty=0.2, min_tokens=2, streaming=True, return_log_probs=True,
    )


def test_every_source_is_cited_by_a_full_commit(contract):
    sources = {k: v for k, v in contract["sources"].items() if k != "note"}
    assert len(sources) >= 9
    for name, src in sources.items():
        assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]), name
        assert src["repo"] and src["path"]
    # every section names a source that exists
    for section in ("sampling_params", "llm", "generate_async", "request_output", "triton_llmapi_model"):
        assert contract[section]["source"] in sources


def test_sampling_kwargs_use_only_upstream_fields(contract):
    fields = contract["sampling_params"]["fields"]
    kwargs = sampling_kwargs(_every_option())
    assert set(kwargs) <= set(fields), set(kwargs) - set(fields)
    assert kwargs["detokenize"] is False  # the LLM API's own detokenization is skipped
    assert kwargs["end_id"] == 2 and kwargs["pad_id"] == 0 and kwargs["bad_token_ids"] == [9]
    # stop words are matched by the tracker, never sent: upstream drops their tokens from token_ids
    assert "stop_token_ids" not in kwargs and "stop" not in kwargs
    assert "drops" in fields["include_stop_str_in_output"]["why"] or "removes" in fields["include_stop_str_in_output"]["why"]


def test_unset_options_are_left_to_the_runtime_default(contract):
    kwargs = sampling_kwargs(GenerationRequest(prompt_token_ids=(1,), max_tokens=3, end_ids=(2,)))
    assert set(kwargs) == {"max_tokens", "end_id", "pad_id", "detokenize", "exclude_input_from_output", "n"}
    for name in ("temperature", "top_k", "top_p", "seed"):
        assert contract["sampling_params"]["fields"][name]["default"] is None  # None = the C++ runtime's default


def test_llm_kwargs_use_only_upstream_constructor_args(contract):
    args = llm_kwargs(LlmSettings(model_dir="/ckpt", tensor_parallel_size=4), cpu_llmapi.KvCacheConfig)
    assert set(args) <= set(contract["llm"]["constructor_args"]), set(args) - set(contract["llm"]["constructor_args"])
    assert args["backend"] == "pytorch" and args["skip_tokenizer_init"] is True
    kv = dataclasses.asdict(args["kv_cache_config"])
    assert set(kv) <= set(contract["llm"]["kv_cache_config_fields"])


def test_production_imports_exist_upstream(contract):
    """runtime.py imports LLM / SamplingParams / KvCacheConfig from the modules that export them."""
    tree = ast.parse(inspect.getsource(runtime))
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names if node.module and node.module.startswith("tensorrt_llm")}
    assert ("tensorrt_llm.llmapi", "KvCacheConfig") in imported
    exports = {(contract["guided_decoding"]["module"], contract["guided_decoding"]["class"].split()[0])}
    exports |= {("tensorrt_llm", n) for n in ("LLM", "SamplingParams")}
    exports |= {("tensorrt_llm.llmapi", n) for n in contract["llm"]["exports"]["names"]}
    assert imported <= exports, imported - exports


def test_cpu_sampling_params_follow_upstream_names_and_defaults(contract):
    fields = contract["sampling_params"]["fields"]
    for f in dataclasses.fields(cpu_llmapi.SamplingParams):
        assert f.name in fields, f.name
        assert f.default == fields[f.name]["default"], f.name
    assert cpu_llmapi.SamplingParams(end_id=5).pad_id == 5  # upstream __post_init__


def test_cpu_kv_cache_config_follows_upstream(contract):
    up = contract["llm"]["kv_cache_config_fields"]
    for f in dataclasses.fields(cpu_llmapi.KvCacheConfig):
        assert f.name in up
    assert cpu_llmapi.KvCacheConfig().enable_block_reuse is ("default True" in up["enable_block_reuse"])


def test_cpu_llm_takes_upstream_arguments(contract):
    params = inspect.signature(cpu_llmapi.LLM).parameters
    ours = set(params) - {"stand_in_parameters"}
    assert ours <= set(contract["llm"]["constructor_args"]), ours - set(contract["llm"]["constructor_args"])
    gen = list(inspect.signature(cpu_llmapi.LLM.generate_async).parameters)[1:]
    upstream = contract["generate_async"]["signature"]
    named = [p for p in gen if not p.startswith("_")]
    assert named[:2] == upstream[:2] and "streaming" in named and set(named) <= set(upstream)


def test_cpu_outputs_follow_upstream(contract):
    ro = contract["request_output"]
    fields = {f.name for f in dataclasses.fields(cpu_llmapi.CompletionOutput) if not f.name.startswith("_")}
    assert fields <= set(ro["completion_output_fields"])
    for prop in ("length", "token_ids_diff"):
        assert prop in ro["completion_output_properties"] and hasattr(cpu_llmapi.CompletionOutput, prop)
    for name in ("abort", "aborted", "__aiter__", "__anext__", "finished"):
        assert hasattr(cpu_llmapi.RequestOutput, name), name

    async def make():
        return cpu_llmapi.RequestOutput(1, [1, 2], cpu_llmapi.SamplingParams(end_id=2))

    out = asyncio.run(make())
    assert set(ro["attributes"]) <= set(vars(out)) | {"finished"}
    upstream_reasons = {v.split()[0] for v in ro["finish_reasons"].values()}
    assert set(cpu_llmapi._FINISH_REASONS.values()) <= upstream_reasons


def test_the_contract_check_sees_a_wrong_name(contract):
    fields = contract["sampling_params"]["fields"]
    assert "stop_words_list" not in fields and "beam_width" not in fields  # C++ backend names, not LLM API ones


def test_guided_decoding_params_follow_upstream(contract):
    """Each NVIDIA guide type becomes exactly one GuidedDecodingParams field, the one the contract names."""
    gd = contract["guided_decoding"]
    assert contract["sources"][gd["source"]]["path"] == "tensorrt_llm/sampling_params.py"
    assert set(gd["from_triton_guide_type"]) == set(GUIDE_TYPES)
    for guide_type, field in gd["from_triton_guide_type"].items():
        guide = "" if guide_type == "json" else '{"type": "integer"}'
        kwargs = guided_decoding_kwargs(GuidedDecoding(guide_type, guide))
        assert list(kwargs) == [field] and field in gd["fields"]
        assert kwargs[field] == (True if field == "json_object" else guide)
    request = GenerationRequest(prompt_token_ids=(1,), max_tokens=3, end_ids=(2,),
                                guided=GuidedDecoding("regex", r"\d+"))
    kwargs = sampling_kwargs(request, cpu_llmapi.GuidedDecodingParams)
    assert "guided_decoding" in contract["sampling_params"]["fields"]
    assert kwargs["guided_decoding"] == cpu_llmapi.GuidedDecodingParams(regex=r"\d+")
    with pytest.raises(ValueError, match="GuidedDecodingParams"):
        sampling_kwargs(request)  # a guide is never dropped silently


def test_cpu_guided_decoding_params_follow_upstream(contract):
    up = contract["guided_decoding"]["fields"]
    ours = {f.name: f.default for f in dataclasses.fields(cpu_llmapi.GuidedDecodingParams)}
    assert ours == {name: fact["default"] for name, fact in up.items()}
    with pytest.raises(ValueError, match="Only one guide can be used for a request, but got 2"):
        cpu_llmapi.GuidedDecodingParams(regex="a", json_object=True).to_guide()
    assert cpu_llmapi.GuidedDecodingParams(json={"type": "integer"}).to_guide() == \
        GuidedDecoding("json_schema", '{"type": "integer"}')
    assert cpu_llmapi.GuidedDecodingParams(json_object=True).to_guide() == GuidedDecoding("json", "")
    assert cpu_llmapi.GuidedDecodingParams(grammar='root ::= "a"').to_guide().guide_type == "ebnf_grammar"


def test_llm_kwargs_with_guided_decoding(contract):
    """guided_decoding_backend 'xgrammar', and the tokenizer loaded: upstream asserts one exists for xgrammar."""
    args = llm_kwargs(LlmSettings(model_dir="/ckpt", guided_decoding=True, tokenizer_dir="/tok"),
                      cpu_llmapi.KvCacheConfig)
    assert set(args) <= set(contract["llm"]["constructor_args"])
    assert args["guided_decoding_backend"] == "xgrammar" and args["skip_tokenizer_init"] is False
    assert args["tokenizer"] == "/tok"  # preprocessing's tokenizer, not a second one
    assert "assert tokenizer is not None" in contract["guided_decoding"]["tokenizer_required"]["fact"]
    plain = llm_kwargs(LlmSettings(model_dir="/ckpt"), cpu_llmapi.KvCacheConfig)
    assert "guided_decoding_backend" not in plain and plain["skip_tokenizer_init"] is True
