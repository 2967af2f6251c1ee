"""Shared for the guided-decoding tests: JSON schemas the random-weight models must follow exactly.

Every string is bounded (``maxLength``) and every array too (``maxItems``): random weights never "decide" to end a
string, so an unbounded one would run to max_tokens. Hangul-biased tiny models fill strings with Korean.
"""

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["서울", "부산", "대구", "광주"]},
        "sky": {"enum": ["맑음", "흐림", "비"]},
        "celsius": {"type": "integer", "minimum": -30, "maximum": 45},
    },
    "required": ["city", "sky", "celsius"],
    "additionalProperties": False,
}
ORDER = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer", "minimum": 1, "maximum": 99999},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 4},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                },
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 2,
        },
    },
    "required": ["order_id", "items"],
    "additionalProperties": False,
}
REVIEW = {
    "type": "object",
    "properties": {
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
        "summary": {"type": "string", "maxLength": 8},
        "recommend": {"type": "boolean"},
    },
    "required": ["stars", "summary", "recommend"],
    "additionalProperties": False,
}
TAGS = {
    "type": "object",
    "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 3}},
    "required": ["tags"],
    "additionalProperties": False,
}
NESTED = {
    "type": "object",
    "properties": {
        "user": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 1000},
                "address": {
                    "type": "object",
                    "properties": {"gu": {"enum": ["강남구", "마포구", "종로구"]}, "zip": {"type": "string", "pattern": "[0-9]{5}"}},
                    "required": ["gu", "zip"],
                    "additionalProperties": False,
                },
            },
            "required": ["id", "address"],
            "additionalProperties": False,
        }
    },
    "required": ["user"],
    "additionalProperties": False,
}
SCORES = {
    "type": "array",
    "items": {"type": "integer", "minimum": 0, "maximum": 100},
    "minItems": 1,
    "maxItems": 4,
}
CHOICE = {"enum": ["예", "아니요", "모르겠어요"]}
OPTIONAL_FIELDS = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 5},
        "page": {"type": "integer", "minimum": 1, "maximum": 500},
        "lang": {"const": "ko"},
    },
    "required": ["lang"],
    "additionalProperties": False,
}
EVENT = {
    "type": "object",
    "properties": {
        "kind": {"enum": ["회의", "점심", "운동"]},
        "attendees": {"type": "array", "items": {"enum": ["민수", "지영", "철수"]}, "minItems": 1, "maxItems": 3},
        "hours": {"type": "integer", "minimum": 1, "maximum": 8},
        "online": {"type": "boolean"},
    },
    "required": ["kind", "attendees", "hours", "online"],
    "additionalProperties": False,
}
REFS = {
    "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                                          "y": {"type": "integer", "minimum": -9, "maximum": 9}},
                        "required": ["x", "y"], "additionalProperties": False}},
    "type": "object",
    "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}},
    "required": ["from", "to"],
    "additionalProperties": False,
}

SCHEMAS = {
    "person": PERSON, "weather": WEATHER, "order": ORDER, "review": REVIEW, "tags": TAGS, "nested": NESTED,
    "scores": SCORES, "choice": CHOICE, "optional_fields": OPTIONAL_FIELDS, "event": EVENT, "refs": REFS,
}


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def guided_schemas() -> dict:
    return SCHEMAS


@pytest.fixture(scope="session")
def guided_server(triton_servers):
    """A real Triton running the tiny random Llama-3 (AkaLlama profile) with guided decoding rendered on."""
    return triton_servers("akallama-70b", "hf", guided_decoding=True)


@pytest.fixture(scope="session")
def gateway_at():
    """``with gateway_at(config) as base_url: ...``: the gateway app served by uvicorn on a free 127.0.0.1 port."""
    from koserve.testing.gateway import serve_gateway

    return serve_gateway
