"""The koserve client's json_schema= / response_format= / tools= against the real Triton with real xgrammar masks,
over gRPC and HTTP, to the ensemble and the BLS."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import BaseModel, Field

from koserve.client import ChatClient
from koserve.errors import InvalidRequestError

pytestmark = pytest.mark.server

ASK = [{"role": "user", "content": "예약 정보를 JSON으로 주세요."}]
TOOL = {"type": "function", "function": {"name": "book", "parameters": {
    "type": "object", "properties": {"nights": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["nights"], "additionalProperties": False}}}


class Room(BaseModel):
    kind: str = Field(max_length=4)
    floor: int = Field(ge=1, le=30)


@pytest.fixture(scope="module", params=[("grpc", "ensemble"), ("http", "ensemble"), ("grpc", "tensorrt_llm_bls")])
def client(request, guided_server):
    protocol, model = request.param
    url = guided_server.grpc_url if protocol == "grpc" else guided_server.http_url
    with ChatClient(url, profile="akallama-70b", model=model, tokenizer=guided_server.tokenizer_dir) as c:
        yield c


def test_json_schema_and_response_format(client, guided_schemas):
    for seed in (1, 2):
        result = client.chat(ASK, json_schema=Room, max_tokens=48, temperature=1.0, seed=seed)
        room = Room.model_validate_json(result.text)
        assert 1 <= room.floor <= 30
        streamed = "".join(client.stream(ASK, json_schema=Room, max_tokens=48, temperature=1.0, seed=seed))
        assert streamed == result.text
    schema = guided_schemas["order"]
    result = client.chat(ASK, response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": schema}},
                         max_tokens=96, temperature=1.0, seed=3)
    jsonschema.validate(json.loads(result.text), schema)


def test_tools_required_gives_a_call(client):
    result = client.chat(ASK, tools=[TOOL], tool_choice="required", max_tokens=32, temperature=1.0, seed=4)
    assert result.finish_reason == "tool_calls" and len(result.tool_calls) == 1
    call = result.tool_calls[0]
    assert call["function"]["name"] == "book"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TOOL["function"]["parameters"])


def test_client_refuses_bad_guides_before_sending(client):
    with pytest.raises(InvalidRequestError, match="keyword 'uniqueItems'"):
        client.chat(ASK, json_schema={"type": "array", "uniqueItems": True})
    with pytest.raises(InvalidRequestError, match="give json_schema or response_format, not both"):
        client.chat(ASK, json_schema={"type": "integer"}, response_format={"type": "json_object"})
