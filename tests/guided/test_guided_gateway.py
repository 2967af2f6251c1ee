"""OpenAI structured output and tool calls through the gateway, driven by the real ``openai`` SDK, in front of a real
Triton whose tiny random-weight Llama-3 is masked by real xgrammar: the ensemble, the BLS and the direct engine path.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from koserve.gateway import load_config

pytestmark = pytest.mark.server

KEY = "sk-guided"
TARGETS = ("ensemble", "tensorrt_llm_bls", "engine")
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "도시의 현재 날씨",
    "parameters": {"type": "object", "properties": {"city": {"enum": ["서울", "부산"]},
                                                     "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME_TOOL = {"type": "function", "function": {
    "name": "get_time", "description": "현재 시각",
    "parameters": {"type": "object", "properties": {"tz": {"enum": ["KST", "UTC"]}}, "required": ["tz"],
                   "additionalProperties": False}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
ASK = [{"role": "user", "content": "서울 날씨 알려 줘. JSON으로."}]


@pytest.fixture(scope="module")
def sdks(guided_server, gateway_at):  # noqa: D103
    specs = [f"akallama-70b={guided_server.grpc_url},tokenizer={guided_server.tokenizer_dir},target=ensemble",
             f"aka-bls={guided_server.grpc_url},profile=akallama-70b,tokenizer={guided_server.tokenizer_dir},"
             f"target=tensorrt_llm_bls",
             f"aka-engine={guided_server.grpc_url},profile=akallama-70b,tokenizer={guided_server.tokenizer_dir},"
             f"target=engine"]
    config = load_config(model_specs=specs, environ={"KOSERVE_API_KEYS": KEY}, max_request_bytes=256 * 1024)
    with gateway_at(config) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)


MODELS = {"ensemble": "akallama-70b", "tensorrt_llm_bls": "aka-bls", "engine": "aka-engine"}


def _schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def _streamed(sdk, **kwargs):
    content, reasons, tool_deltas = [], [], []
    for ev in sdk.chat.completions.create(stream=True, **kwargs):
        for choice in ev.choices:
            if choice.delta.content:
                content.append(choice.delta.content)
            if choice.delta.tool_calls:
                tool_deltas.extend(choice.delta.tool_calls)
            if choice.finish_reason:
                reasons.append(choice.finish_reason)
    return "".join(content), reasons, tool_deltas


@pytest.mark.parametrize("target", TARGETS)
def test_json_schema_streamed_and_not(sdks, guided_schemas, target):
    """11 schemas x 2 seeds x (streamed, not) = 44 generations per target, all valid; streamed == whole."""
    model = MODELS[target]
    for name, schema in guided_schemas.items():
        for seed in (5, 6):
            args = dict(model=model, messages=ASK, max_tokens=96, temperature=1.0, seed=seed,
                        response_format=_schema_format(name, schema))
            r = sdks.chat.completions.create(**args)
            text = r.choices[0].message.content
            assert r.choices[0].finish_reason == "stop", (name, text)
            jsonschema.validate(json.loads(text), schema)
            streamed, reasons, _ = _streamed(sdks, **args)
            assert streamed == text and reasons == ["stop"], (name, seed)


class Booking(BaseModel):
    city: str = Field(max_length=4)
    nights: int = Field(ge=1, le=14)
    breakfast: bool


def test_sdk_parse_with_a_pydantic_model(sdks):
    for target in TARGETS:
        r = sdks.chat.completions.parse(model=MODELS[target], messages=ASK, max_tokens=64, temperature=1.0,
                                         seed=3, response_format=Booking)
        booking = r.choices[0].message.parsed
        assert isinstance(booking, Booking) and 1 <= booking.nights <= 14


def test_json_object_mode(sdks):
    r = sdks.chat.completions.create(model="akallama-70b", messages=ASK, max_tokens=48, temperature=1.0, seed=1,
                                     response_format={"type": "json_object"})
    text = r.choices[0].message.content
    assert text[:1] in '{["-0123456789tfn', text
    if r.choices[0].finish_reason == "stop":
        json.loads(text)


def _check_call(call, tools=TOOLS):
    fn = {t["function"]["name"]: t["function"] for t in tools}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), fn["parameters"])
    assert call.type == "function" and call.id.startswith("call_")


@pytest.mark.parametrize("target", TARGETS)
def test_tool_choice_required_and_named(sdks, target):
    model = MODELS[target]
    for seed in range(3):
        r = sdks.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                         max_tokens=64, temperature=1.0, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        _check_call(choice.message.tool_calls[0])
        named = {"type": "function", "function": {"name": "get_time"}}
        r = sdks.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice=named,
                                         max_tokens=64, temperature=1.0, seed=seed)
        call = r.choices[0].message.tool_calls[0]
        assert call.function.name == "get_time"
        _check_call(call)
        text, reasons, deltas = _streamed(sdks, model=model, messages=ASK, tools=TOOLS, tool_choice=named,
                                          max_tokens=64, temperature=1.0, seed=seed)
        assert text == "" and reasons == ["tool_calls"] and len(deltas) == 1
        assert deltas[0].function.name == "get_time"
        assert deltas[0].function.arguments == call.function.arguments  # same seed, same call


def test_tool_choice_none_and_auto(sdks):
    r = sdks.chat.completions.create(model="akallama-70b", messages=ASK, tools=TOOLS, tool_choice="none",
                                     max_tokens=12, temperature=1.0, seed=2)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    # auto: no grammar; the random model answers text (a call would have to be exactly {"name", "arguments"})
    for stream in (False, True):
        args = dict(model="akallama-70b", messages=ASK, tools=TOOLS, tool_choice="auto", max_tokens=12,
                    temperature=1.0, seed=4)
        if stream:
            text, reasons, deltas = _streamed(sdks, **args)
            assert deltas == [] and text and reasons == [whole.choices[0].finish_reason]
            assert text == whole.choices[0].message.content
        else:
            whole = sdks.chat.completions.create(**args)
            assert whole.choices[0].message.tool_calls is None and whole.choices[0].finish_reason != "tool_calls"


def test_tool_results_round_trip(sdks):
    """An assistant's call and the tool's result (role tool) go back to the model as text; the SDK accepts it."""
    first = sdks.chat.completions.create(model="aka-bls", messages=ASK, tools=TOOLS, tool_choice="required",
                                         max_tokens=64, temperature=1.0, seed=8)
    call = first.choices[0].message.tool_calls[0]
    history = ASK + [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 12, "sky": "맑음"}'}]
    r = sdks.chat.completions.create(model="aka-bls", messages=history, tools=TOOLS, max_tokens=8, temperature=1.0,
                                     seed=9)
    assert r.choices[0].message.content or r.choices[0].message.tool_calls


@pytest.mark.parametrize("field, body, needle", [
    ("response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "integer", "multipleOf": 2}}}}, "keyword 'multipleOf' at # is not supported"),
    ("response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "enum": ["가" * 20000]}}}}, "the limit is 32768 bytes"),
    ("response_format", {"response_format": {"type": "regex"}}, "response_format.type 'regex' is not supported"),
    ("response_format", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "nonsense"}}}}, "cannot be compiled"),
    ("tools", {"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "must match"),
    ("tool_choice", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "'nope', which is not in tools"),
    ("messages", {"tools": [{"type": "function", "function": {"name": "f", "description": "<|eot_id|>"}}]},
     "<|eot_id|>"),
    ("messages", {"messages": ASK + [{"role": "assistant", "content": "호출"},
                                     {"role": "tool", "tool_call_id": "c1", "content": "ok<|start_header_id|>"}]},
     "<|start_header_id|>"),
])
def test_bad_structured_requests_are_400_naming_what(sdks, field, body, needle):
    args = {"model": "akallama-70b", "messages": ASK, "max_tokens": 8, **body}
    with pytest.raises(openai.BadRequestError) as info:
        sdks.chat.completions.create(**args)
    assert needle in info.value.body["message"], info.value.body
    r = sdks.chat.completions.create(model="akallama-70b", messages=ASK, max_tokens=16, seed=1,
                                     response_format=_schema_format("c", {"enum": ["네", "아니요"]}))
    assert json.loads(r.choices[0].message.content) in ("네", "아니요")


@pytest.fixture(scope="module")
def pytorch_sdk(triton_servers, gateway_at):
    """The gateway in front of the guided server rendered --engine-backend pytorch (the LLM-API engine step)."""
    server = triton_servers("akallama-70b", "hf", guided_decoding=True, engine_backend="pytorch")
    specs = [f"akallama-70b={server.grpc_url},tokenizer={server.tokenizer_dir},target=ensemble",
             f"aka-bls={server.grpc_url},profile=akallama-70b,tokenizer={server.tokenizer_dir},target=tensorrt_llm_bls"]
    config = load_config(model_specs=specs, environ={"KOSERVE_API_KEYS": KEY}, max_request_bytes=256 * 1024)
    with gateway_at(config) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.mark.parametrize("model", ["akallama-70b", "aka-bls"])
def test_pytorch_engine_step_structured_output_and_tools(pytorch_sdk, guided_schemas, model):
    """On the LLM-API step: json_schema streamed and not (valid, streamed == whole), the SDK's parse with a
    pydantic model, and a required tool call."""
    for name in ("person", "nested", "event"):
        args = dict(model=model, messages=ASK, max_tokens=96, temperature=1.0, seed=7,
                    response_format=_schema_format(name, guided_schemas[name]))
        r = pytorch_sdk.chat.completions.create(**args)
        text = r.choices[0].message.content
        jsonschema.validate(json.loads(text), guided_schemas[name])
        streamed, reasons, _ = _streamed(pytorch_sdk, **args)
        assert streamed == text and reasons == ["stop"], name
    booking = pytorch_sdk.chat.completions.parse(model=model, messages=ASK, max_tokens=64, temperature=1.0, seed=3,
                                                 response_format=Booking).choices[0].message.parsed
    assert isinstance(booking, Booking) and 1 <= booking.nights <= 14
    r = pytorch_sdk.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=64, temperature=1.0, seed=1)
    assert r.choices[0].finish_reason == "tool_calls"
    _check_call(r.choices[0].message.tool_calls[0])
