"""A guided-decoding request as TensorRT-LLM 1.2.1 takes it, and the checks it passes before any engine sees it.

Guide types are NVIDIA's request strings (triton_backend ``inflight_batcher_llm/src/utils.cc``
``getGuidedDecodingParamsFromTensors`` at release/1.2.1; tensorrtllm_backend ``docs/guided_decoding.md``, r26.04):
``json`` (any JSON, no guide), ``json_schema``, ``regex`` and ``ebnf_grammar``. The C++ backend maps an unknown type
to "no guide" without a word; koserve refuses it by name instead.

xgrammar 0.1.32 compiles a JSON schema but silently ignores some keywords (measured: ``if``/``then``/``not``,
``multipleOf``, ``uniqueItems``, ``dependentRequired``, remote ``$ref``), and does not hold a ``number`` (non-integer)
to ``minimum``/``maximum`` (measured: 1.184449 under ``maximum: 1``; integer bounds hold). Output would then not
validate against the schema the client sent, so those are refused by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from koserve.errors import InvalidRequestError

GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")
MAX_GUIDE_BYTES = 32 * 1024
MAX_SCHEMA_DEPTH = 16
UNSUPPORTED_SCHEMA_KEYWORDS = frozenset({
    "if", "then", "else", "not", "multipleOf", "uniqueItems", "contains", "minContains", "maxContains",
    "dependentRequired", "dependentSchemas", "dependencies", "propertyNames", "unevaluatedProperties",
    "unevaluatedItems", "$dynamicRef", "$recursiveRef",
})
# keywords whose value is a schema, a list of schemas, or a map of name -> schema
_NUMBER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_SCHEMA_VALUED = frozenset({"items", "additionalProperties", "additionalItems"})
_SCHEMA_LISTS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})


@dataclass(frozen=True)
class GuidedDecoding:
    """One request's guide: NVIDIA's ``guide_type`` string and its ``guide`` text (empty for ``json``)."""

    guide_type: str
    guide: str = ""

    @property
    def cache_key(self) -> tuple[str, str]:
        return (self.guide_type, self.guide)


def _walk(node, path: str, depth: int) -> None:
    if isinstance(node, bool):
        return
    if not isinstance(node, dict):
        raise InvalidRequestError(f"JSON schema at {path} must be an object or a boolean, got {type(node).__name__}")
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidRequestError(f"JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels at {path}")
    types = node.get("type")
    if "number" in (types if isinstance(types, list) else [types]):
        bounds = [k for k in _NUMBER_BOUNDS if k in node]
        if bounds:
            raise InvalidRequestError(
                f"JSON schema at {path}: {', '.join(bounds)} on type 'number' is not enforced by guided decoding "
                f"(xgrammar 0.1.32 holds bounds on 'integer' only); use type 'integer' or leave the bound out"
            )
    for key, value in node.items():
        where = f"{path}/{key}"
        if key in UNSUPPORTED_SCHEMA_KEYWORDS:
            raise InvalidRequestError(
                f"JSON schema keyword {key!r} at {path} is not supported by guided decoding (xgrammar 0.1.32 would "
                f"ignore it); unsupported keywords: {', '.join(sorted(UNSUPPORTED_SCHEMA_KEYWORDS))}"
            )
        if key == "$ref" and not (isinstance(value, str) and (value == "#" or value.startswith("#/"))):
            raise InvalidRequestError(f"JSON schema $ref at {path} must point inside the schema ('#/...'), got {value!r}")
        if key in _SCHEMA_VALUED:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    _walk(item, f"{where}/{i}", depth + 1)
            else:
                _walk(value, where, depth + 1)
        elif key in _SCHEMA_LISTS:
            if not isinstance(value, list) or not value:
                raise InvalidRequestError(f"JSON schema {key} at {path} must be a non-empty list of schemas")
            for i, item in enumerate(value):
                _walk(item, f"{where}/{i}", depth + 1)
        elif key in _SCHEMA_MAPS:
            if not isinstance(value, dict):
                raise InvalidRequestError(f"JSON schema {key} at {path} must map names to schemas")
            for name, item in value.items():
                _walk(item, f"{where}/{name}", depth + 1)


def check_json_schema(schema) -> None:
    """Refuse a schema koserve cannot enforce exactly: not an object, too deep, or using an unsupported keyword."""
    _walk(schema, "#", 0)


def parse_guided_decoding(guide_type: str | None, guide: str | None) -> GuidedDecoding | None:
    """Validate NVIDIA's two inputs; None when no guide type is given (or it is empty)."""
    guide_type = (guide_type or "").strip()
    guide = guide or ""
    if not guide_type:
        if guide:
            raise InvalidRequestError(
                "guided_decoding_guide is given without guided_decoding_guide_type (one of "
                f"{', '.join(GUIDE_TYPES)})"
            )
        return None
    if guide_type not in GUIDE_TYPES:
        raise InvalidRequestError(
            f"guided_decoding_guide_type {guide_type!r} is not supported; use one of {', '.join(GUIDE_TYPES)}"
        )
    size = len(guide.encode("utf-8"))
    if size > MAX_GUIDE_BYTES:
        raise InvalidRequestError(f"guided_decoding_guide is {size} bytes; the limit is {MAX_GUIDE_BYTES} bytes")
    if guide_type == "json":
        if guide.strip():
            raise InvalidRequestError("guided_decoding_guide must be empty for guide type 'json' (any JSON)")
        return GuidedDecoding("json", "")
    if not guide.strip():
        raise InvalidRequestError(f"guide type {guide_type!r} needs a guided_decoding_guide (it is empty)")
    if guide_type == "json_schema":
        try:
            schema = json.loads(guide)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(
                f"guided_decoding_guide is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        check_json_schema(schema)
    return GuidedDecoding(guide_type, guide)
