"""The CPU stand-in under real xgrammar 0.1.32 masks: the tiny random-weight Llama-3 emits only schema-valid JSON,
compilation is cached and bounded, bad guides are refused by name (no Triton here: the engine and its parser)."""

from __future__ import annotations

import json
import time

import jsonschema
import numpy as np
import pytest
from tokenizers import Tokenizer

from koserve.cpu_engine.hf import HFEngine
from koserve.cpu_engine.replay import ReplayEngine
from koserve.cpu_engine.settings import EngineSettings
from koserve.cpu_engine.triton import parse_triton_request
from koserve.cpu_engine.types import EngineRequest, FinishReason
from koserve.errors import InvalidRequestError
from koserve.fixtures import tiny_model_dir, tokenizer_dir
from koserve.guided import GuidedDecoding
from koserve.guided.tokenizer_info import write_tokenizer_info

END_IDS = (128009, 128001)  # the AkaLlama profile's end ids


@pytest.fixture(scope="module")
def info_path(tmp_path_factory):
    return write_tokenizer_info(tokenizer_dir("llama3"), END_IDS,
                                tmp_path_factory.mktemp("xgr") / "xgrammar_tokenizer_info.json")


@pytest.fixture(scope="module")
def engine(info_path):
    eng = HFEngine(tiny_model_dir("llama3"), max_batch_size=4, num_threads=1,
                   guided_decoding=(str(info_path), 10.0))
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(str(tokenizer_dir("llama3") / "tokenizer.json"))


def _prompt(tok) -> tuple[int, ...]:
    return tuple(tok.encode("<|begin_of_text|>JSON으로 대답해 주세요.", add_special_tokens=False).ids)


def _generate(engine, tok, guide: GuidedDecoding, seed: int, max_new_tokens: int = 96, **sampling):
    req = EngineRequest(input_ids=_prompt(tok), max_new_tokens=max_new_tokens, end_ids=(128009,),
                        stop_words=((128001,),), seed=seed, guided=guide, **sampling)
    out = engine.submit(req).result(timeout=120)
    ids = [t for t in out.token_ids if t not in END_IDS]
    return tok.decode(ids, skip_special_tokens=False), out


def test_every_schema_gives_valid_json_under_sampling(engine, tok, guided_schemas):
    """11 schemas x 3 seeds, temperature 1 (the random model's own distribution, masked)."""
    for name, schema in guided_schemas.items():
        guide = GuidedDecoding("json_schema", json.dumps(schema, ensure_ascii=False))
        for seed in range(3):
            text, out = _generate(engine, tok, guide, seed, temperature=1.0, top_k=0, top_p=1.0)
            assert out.finish_reason in (FinishReason.END_ID, FinishReason.STOP_WORDS), (name, seed, text)
            jsonschema.validate(json.loads(text), schema)


def test_greedy_and_builtin_json(engine, tok):
    text, out = _generate(engine, tok, GuidedDecoding("json_schema", json.dumps({"enum": ["예", "아니요"]})), 0)
    assert json.loads(text) in ("예", "아니요")
    # guide type "json" (any JSON): a regex guide stands in to keep the random model short
    text, _ = _generate(engine, tok, GuidedDecoding("regex", "[0-9]{3}-[가-힣]{2}"), 1, temperature=1.0)
    assert len(text) == 6 and text[:3].isdigit() and text[3] == "-", text


def test_unguided_request_is_unchanged(engine, tok):
    """Without a guide the engine does not mask: the Hangul-biased random model does not start with '{'."""
    req = EngineRequest(input_ids=_prompt(tok), max_new_tokens=8, end_ids=(128009,))
    out = engine.submit(req).result(timeout=60)
    assert not tok.decode(out.token_ids).lstrip().startswith("{")


def test_compile_is_cached_per_guide(engine):
    guide = GuidedDecoding("json_schema", json.dumps({"type": "object", "properties": {"cached": {"type": "boolean"}},
                                                      "required": ["cached"]}))
    before = engine.grammars.compiles
    engine.grammars.get(guide)
    engine.grammars.get(guide)
    engine.grammars.get(GuidedDecoding(guide.guide_type, guide.guide))
    assert engine.grammars.compiles == before + 1


def test_bad_guides_are_refused_by_name_and_engine_keeps_serving(engine, tok):
    bad = GuidedDecoding("ebnf_grammar", "root ::= missing_rule")
    with pytest.raises(InvalidRequestError, match="cannot be compiled"):
        engine.submit(EngineRequest(input_ids=_prompt(tok), max_new_tokens=4, guided=bad))
    with pytest.raises(InvalidRequestError, match="cannot be compiled"):  # remembered: fails again at once
        engine.submit(EngineRequest(input_ids=_prompt(tok), max_new_tokens=4, guided=bad))
    text, _ = _generate(engine, tok, GuidedDecoding("json_schema", json.dumps({"enum": ["네"]})), 0)
    assert json.loads(text) == "네"


def test_compile_time_bound(info_path):
    """A guide slower to compile than the bound is refused naming the limit (a deliberately tiny bound)."""
    from koserve.cpu_engine.guided import GrammarCache, load_tokenizer_info

    cache = GrammarCache(load_tokenizer_info(info_path, 128256), info_path=info_path, timeout_s=3.0).start()
    try:
        # 16 optional strings of maxLength 64: over 30 s to compile on an idle machine here (of maxLength 8: 1.8 s
        # idle, under the bound)
        schema = {"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 64} for i in range(16)}}
        hostile = GuidedDecoding("json_schema", json.dumps(schema))
        started = time.monotonic()
        with pytest.raises(InvalidRequestError, match=r"did not compile within the limit of 3 s"):
            cache.get(hostile)
        assert time.monotonic() - started < 8
        with pytest.raises(InvalidRequestError, match=r"did not compile within the limit"):  # remembered
            cache.get(hostile)
        assert cache.compiles == 1
        # the killed worker is replaced: the next guide compiles
        assert cache.get(GuidedDecoding("json_schema", json.dumps({"enum": ["네"]}))) is not None
    finally:
        cache.shutdown()


def test_replay_engine_refuses_guided_requests(tok):
    eng = ReplayEngine([1, 2, 3])
    try:
        with pytest.raises(InvalidRequestError, match="replay engine .* cannot follow a guide"):
            eng.submit(EngineRequest(input_ids=(1,), max_new_tokens=2, guided=GuidedDecoding("json")))
    finally:
        eng.shutdown()


def test_engine_off_refuses_guided(tok):
    eng = HFEngine(tiny_model_dir("llama3"), max_batch_size=1, num_threads=1)
    try:
        with pytest.raises(InvalidRequestError, match="guided decoding is off .* --guided-decoding"):
            eng.submit(EngineRequest(input_ids=_prompt(tok), max_new_tokens=2, guided=GuidedDecoding("json")))
    finally:
        eng.shutdown()


def _tensors(**extra):
    base = {"input_ids": np.array([[1, 2, 3]], dtype=np.int32), "request_output_len": np.array([[4]], np.int32)}
    base.update(extra)
    return base.get


def test_parse_reads_nvidias_input_names():
    settings = EngineSettings(mode="replay", tokenizer_dir="x")
    req = parse_triton_request(_tensors(
        guided_decoding_guide_type=np.array([[b"json_schema"]], dtype=object),
        guided_decoding_guide=np.array([[b'{"type": "integer"}']], dtype=object)), settings)
    assert req.guided == GuidedDecoding("json_schema", '{"type": "integer"}')
    req = parse_triton_request(_tensors(guided_decoding_guide_type=np.array([[b"json"]], dtype=object)), settings)
    assert req.guided == GuidedDecoding("json", "")
    assert parse_triton_request(_tensors(), settings).guided is None
    with pytest.raises(InvalidRequestError, match="'yaml' is not supported; use one of json, json_schema, regex"):
        parse_triton_request(_tensors(guided_decoding_guide_type=np.array([[b"yaml"]], dtype=object)), settings)
