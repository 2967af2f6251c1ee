"""Structured output through a real Triton (2.51 from the pytriton wheel) and real xgrammar masks: the ensemble and
the BLS take NVIDIA's guided_decoding_guide_type / guided_decoding_guide as NVIDIA's end_to_end_grpc_client.py sends
them (``np.array([[value]]).astype(object)``), streamed or not; every answer of the random-weight model validates
against its schema, and a streamed answer's deltas concatenate to the unstreamed answer for the same seed.

The tests taking ``engine_server`` run on both engine renderings (``engine_backend``): the C++ backend's interface
on the stand-in, and the LLM API step (``SamplingParams(guided_decoding=GuidedDecodingParams(...))``) on the
stand-in's LLM API object; the masks are xgrammar's either way."""

from __future__ import annotations

import json
import queue
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jsonschema
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

pytestmark = pytest.mark.server

PROMPT = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nJSON으로 답하세요.<|eot_id|>" \
         "<|start_header_id|>assistant<|end_header_id|>\n\n"
SEEDS = (11, 12)
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def engine_server(triton_servers, engine_backend):
    """The guided server (tiny random Llama-3, --guided-decoding) on one engine rendering."""
    server = triton_servers("akallama-70b", "hf", guided_decoding=True, engine_backend=engine_backend)
    config = (server.repo / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8")
    assert ('key: "llm_runtime"' in config) == (engine_backend == "pytorch")  # the step under test is the one named
    return server


def _input(name, value):
    t = grpcclient.InferInput(name, value.shape, np_to_triton_dtype(value.dtype))
    t.set_data_from_numpy(value)
    return t


def nvidia_inputs(prompt, max_tokens, stream, seed, guide_type=None, guide=None):
    """end_to_end_grpc_client.py's tensors (TensorRT-LLM 1.2.1 triton_backend), plus seed."""
    inputs = {
        "text_input": np.array([[prompt]]).astype(object),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "stream": np.array([[stream]], dtype=bool),
        "seed": np.array([[seed]], dtype=np.uint64),
        "temperature": np.array([[1.0]], dtype=np.float32),
    }
    if guide_type is not None:
        inputs["guided_decoding_guide_type"] = np.array([[guide_type]]).astype(object)
    if guide is not None:
        inputs["guided_decoding_guide"] = np.array([[guide]]).astype(object)
    return [_input(k, v) for k, v in inputs.items()]


def generate(url, model, inputs, stream) -> list[str]:
    """The text_output of every response (one for an unstreamed request); raises the server's error."""
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    try:
        client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
        client.async_stream_infer(model, inputs, request_id=f"ks-{uuid.uuid4()}",
                                  enable_empty_final_response=True)
        texts = []
        for _ in range(4096):
            result, error = results.get(timeout=TIMEOUT_S)
            if error is not None:
                raise error
            out = result.as_numpy("text_output")
            if out is not None and out.size:
                texts.append(out.reshape(-1)[0].decode("utf-8"))
            if result.get_response().parameters["triton_final_response"].bool_param:
                return texts
        raise AssertionError("more than 4096 responses")
    finally:
        client.stop_stream()
        client.close()


def _one(url, model, schema, seed, stream):
    guide = json.dumps(schema, ensure_ascii=False)
    texts = generate(url, model, nvidia_inputs(PROMPT, 96, stream, seed, "json_schema", guide), stream)
    return "".join(texts), len(texts)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_schemas_streamed_and_not_validate(engine_server, guided_schemas, model):
    """11 schemas x 2 seeds x (streamed, not) = 44 generations per model and engine rendering."""
    jobs = [(name, seed, stream) for name in guided_schemas for seed in SEEDS for stream in (False, True)]
    with ThreadPoolExecutor(4) as pool:
        answers = dict(zip(jobs, pool.map(
            lambda j: _one(engine_server.grpc_url, model, guided_schemas[j[0]], j[1], j[2]), jobs)))
    for (name, seed, stream), (text, responses) in answers.items():
        jsonschema.validate(json.loads(text), guided_schemas[name])
        if stream:
            assert responses > 1, (name, seed)
            # exact streaming: the deltas concatenate to the whole answer of the same seed
            assert text == answers[(name, seed, False)][0], (name, seed)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_nvidia_guide_types(engine_server, model):
    url = engine_server.grpc_url
    text = "".join(generate(url, model, nvidia_inputs(PROMPT, 8, False, 1, "regex", r"\d{4}"), False))
    assert len(text) == 4 and text.isdigit(), text
    text = "".join(generate(url, model, nvidia_inputs(PROMPT, 24, False, 2, "ebnf_grammar",
                                                      'root ::= "네" | "아니요"'), False))
    assert text in ("네", "아니요"), text
    # "json" (any JSON, no guide) with NVIDIA's README values: a random model may run to max_tokens, so only
    # the start is checked
    text = "".join(generate(url, model, nvidia_inputs(PROMPT, 6, False, 3, "json"), False))
    assert text[:1] in '{["-0123456789tfn', text


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
@pytest.mark.parametrize("guide_type, guide, needle", [
    ("yaml", "a: 1", "'yaml' is not supported; use one of json, json_schema, regex, ebnf_grammar"),
    ("json_schema", "{not json", "guided_decoding_guide is not valid JSON"),
    ("json_schema", json.dumps({"type": "integer", "multipleOf": 3}), "keyword 'multipleOf' at # is not supported"),
    ("json_schema", json.dumps({"type": "number", "maximum": 1}), "maximum on type 'number' is not enforced"),
    ("json_schema", json.dumps({"enum": ["x" * 40000]}), "bytes; the limit is 32768 bytes"),
    ("ebnf_grammar", "root ::= undefined_rule", "cannot be compiled"),
    ("json_schema", json.dumps({"type": "nonsense"}), "cannot be compiled"),
])
def test_bad_guides_refused_by_name_and_server_keeps_serving(engine_server, model, guide_type, guide, needle):
    url = engine_server.grpc_url
    with pytest.raises(InferenceServerException, match=needle):
        generate(url, model, nvidia_inputs(PROMPT, 8, True, 1, guide_type, guide), True)
    text = "".join(generate(url, model, nvidia_inputs(PROMPT, 8, False, 1, "regex", "[0-9]{2}"), False))
    assert len(text) == 2 and text.isdigit()


def test_server_without_guided_decoding_refuses_clearly(triton_servers, engine_backend):
    plain = triton_servers("akallama-70b", "hf", engine_backend=engine_backend)
    with pytest.raises(InferenceServerException, match="guided decoding is off .* --guided-decoding"):
        generate(plain.grpc_url, "ensemble", nvidia_inputs(PROMPT, 8, False, 1, "json"), False)


def test_hostile_schema_is_cut_at_the_compile_bound_and_the_server_keeps_serving(engine_server):
    """40 optional strings of maxLength 64 take over 60 s to compile on an idle machine here (of maxLength 8: 4.5 s
    idle, more than 10 s under load, so too close to the bound); the stand-in's bound is 10 s
    (guided_compile_timeout_s), so the schema is refused naming the limit, the worker is killed and replaced, and
    requests keep being served."""
    url = engine_server.grpc_url
    hostile = json.dumps({"type": "object", "properties": {f"k{i}": {"type": "string", "maxLength": 64}
                                                           for i in range(40)}})
    with pytest.raises(InferenceServerException, match="did not compile within the limit of 10 s"):
        generate(url, "ensemble", nvidia_inputs(PROMPT, 8, False, 1, "json_schema", hostile), False)
    with pytest.raises(InferenceServerException, match="did not compile within the limit of 10 s"):  # cached refusal
        generate(url, "tensorrt_llm_bls", nvidia_inputs(PROMPT, 8, True, 1, "json_schema", hostile), True)
    text = "".join(generate(url, "ensemble", nvidia_inputs(PROMPT, 16, False, 1, "json_schema",
                                                           json.dumps({"enum": ["네", "아니요"]})), False))
    assert json.loads(text) in ("네", "아니요")


def test_the_engine_serves_others_while_a_guide_compiles(engine_server):
    """Both stand-ins compile a new guide off the engine's request path (the LLM-API step's CPU LLM off its event loop,
    as upstream's generate_async returns at once; the C++-contract stand-in off Triton's execute thread): a plain
    request sent while a hostile schema compiles finishes first."""
    import time

    url = engine_server.grpc_url
    hostile = json.dumps({"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 63}
                                                           for i in range(41)}})
    done = {}

    def send_hostile():
        try:
            generate(url, "ensemble", nvidia_inputs(PROMPT, 8, False, 1, "json_schema", hostile), False)
        except InferenceServerException as exc:
            done["hostile"] = time.monotonic()
            return str(exc)
        return "compiled"

    with ThreadPoolExecutor(1) as pool:
        refused = pool.submit(send_hostile)
        time.sleep(1.0)  # the hostile guide is compiling (it takes longer than the 10 s bound)
        text = "".join(generate(url, "ensemble", nvidia_inputs(PROMPT, 8, False, 2), False))
        done["plain"] = time.monotonic()
        assert "did not compile within the limit of 10 s" in refused.result(timeout=120)
    assert text and done["plain"] < done["hostile"]
