"""OpenAI's ``response_format`` and ``tools`` as guided decoding and prompt text (the gateway and the client).

- ``response_format``: ``{"type": "text"}`` → no guide; ``json_object`` → guide type ``json``; ``json_schema`` →
  guide type ``json_schema`` with its ``schema``. Guided decoding enforces every schema it accepts token by token, so
  ``strict: true`` holds by construction; a schema guided decoding cannot enforce (an unsupported keyword, a bound on
  a ``number``: :mod:`koserve.guided.spec`) is refused with ``strict: true`` and, as OpenAI's non-strict mode only
  promises best effort, also without it (koserve never returns output it knows may not match).
- ``tools``: neither AkaLlama (Llama-3-70B-Instruct, before Llama 3.1's tool format) nor komt has a trained tool
  format. koserve's format (:func:`tools_system_text`) is a system-message section listing the functions as JSON and
  asking for exactly one JSON object ``{"name": ..., "arguments": {...}}`` to call one. ``tool_choice``:
  ``none`` → no tool section, text; ``required`` → a JSON-schema guide allowing any listed function with its
  ``parameters``; a named function → a guide for that one; ``auto`` → no guide: the answer is a tool call when it is
  exactly such a JSON object naming a listed function (:func:`parse_tool_call`), else text. (TensorRT-LLM 1.2.1's
  C++ backend maps only json, json_schema, regex and ebnf_grammar; structural tags, which would let a grammar
  allow "text or a call", are not among them.)
- Tool results (``role: tool``) and assistant tool calls become ordinary message text (:func:`tool_messages`), so the
  chat templates stay as the models were trained and the injection checks see every caller-supplied byte.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from koserve.errors import InvalidRequestError
from koserve.guided.spec import GuidedDecoding, parse_guided_decoding

MAX_TOOLS = 32
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TOOL_RESULT_HEADER = "[도구 결과 / tool result: {name}]"


def guide_from_response_format(response_format: Any) -> GuidedDecoding | None:
    """The guide for an OpenAI ``response_format`` (dict); None for text. Errors name the field."""
    if response_format is None:
        return None
    if hasattr(response_format, "model_dump"):
        response_format = response_format.model_dump(by_alias=True, exclude_none=True)
    if not isinstance(response_format, dict) or "type" not in response_format:
        raise InvalidRequestError("response_format must be an object with a 'type' (text, json_object, json_schema)")
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return GuidedDecoding("json", "")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise InvalidRequestError("response_format.json_schema.schema must be a JSON schema object")
        return parse_guided_decoding("json_schema", json.dumps(spec["schema"], ensure_ascii=False))
    raise InvalidRequestError(
        f"response_format.type {kind!r} is not supported; use text, json_object or json_schema"
    )


def check_tools(tools: Any) -> list[dict]:
    """OpenAI function tools, validated: ``[{"type": "function", "function": {"name", "parameters", ...}}]``."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(f"tools has {len(tools)} entries; the limit is {MAX_TOOLS}")
    out, names = [], set()
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict):
            raise InvalidRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidRequestError(f"tools[{i}].function.name must match [A-Za-z0-9_-]{{1,64}}, got {name!r}")
        if name in names:
            raise InvalidRequestError(f"tools[{i}].function.name {name!r} is given twice")
        names.add(name)
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise InvalidRequestError(f"tools[{i}].function.parameters must be a JSON schema object")
        out.append({"name": name, "description": str(fn.get("description") or ""), "parameters": params})
    return out


def _call_schema(fn: dict) -> dict:
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": fn["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False}


def tool_choice_mode(tool_choice: Any, functions: list[dict]) -> tuple[str, str | None]:
    """``("none" | "auto" | "required" | "named", name)`` for an OpenAI ``tool_choice`` (default auto)."""
    if tool_choice is None or tool_choice in ("auto", "none", "required"):
        return (tool_choice or "auto"), None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in {f["name"] for f in functions}:
            raise InvalidRequestError(f"tool_choice names function {name!r}, which is not in tools")
        return "named", name
    raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', "
                              "'function': {'name': ...}}")


def tool_guide(functions: list[dict], mode: str, name: str | None) -> GuidedDecoding | None:
    """The JSON-schema guide enforcing a call (``required``: any listed function; ``named``: that one)."""
    if mode == "required":
        chosen = functions
    elif mode == "named":
        chosen = [f for f in functions if f["name"] == name]
    else:
        return None
    schema = _call_schema(chosen[0]) if len(chosen) == 1 else {"anyOf": [_call_schema(f) for f in chosen]}
    return parse_guided_decoding("json_schema", json.dumps(schema, ensure_ascii=False))


def tools_system_text(functions: list[dict]) -> str:
    """koserve's tool section of the system message (both models; documented in docs/client.md)."""
    listing = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    return (
        "다음 함수를 호출할 수 있습니다. 함수를 호출하려면 다른 말 없이 JSON 객체 하나만 답하세요: "
        '{"name": 함수 이름, "arguments": 인자 객체}.\n'
        "You can call these functions. To call one, answer with exactly one JSON object "
        '{"name": <function name>, "arguments": <arguments object>} and nothing else.\n'
        f"Functions:\n{listing}"
    )


def tool_messages(messages: list[dict], functions: list[dict] | None) -> list[dict]:
    """OpenAI chat messages with tool calls and results as plain ``system``/``user``/``assistant`` text."""
    out: list[dict] = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role == "tool":
            name = m.get("name") or m.get("tool_call_id") or "tool"
            text = f"{TOOL_RESULT_HEADER.format(name=name)}\n{m.get('content') or ''}"
            if out and out[-1]["role"] == "user":
                out[-1] = {"role": "user", "content": out[-1]["content"] + "\n\n" + text}
            else:
                out.append({"role": "user", "content": text})
        elif role == "assistant" and m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                fn = call.get("function") or {}
                try:
                    args = json.loads(fn.get("arguments") or "{}")
                except json.JSONDecodeError:
                    raise InvalidRequestError(f"messages[{i}].tool_calls: arguments are not JSON") from None
                calls.append(json.dumps({"name": fn.get("name"), "arguments": args}, ensure_ascii=False))
            out.append({"role": "assistant", "content": "\n".join(calls)})
        else:
            out.append({"role": role, "content": m.get("content") or ""})
    if functions:
        section = tools_system_text(functions)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{section}"}
        else:
            out.insert(0, {"role": "system", "content": section})
    return out


def parse_tool_call(text: str, functions: list[dict]) -> dict | None:
    """The OpenAI ``tool_calls`` entry when ``text`` is exactly one call of a listed function, else None."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    if not (isinstance(value, dict) and set(value) == {"name", "arguments"} and isinstance(value["arguments"], dict)
            and value["name"] in {f["name"] for f in functions}):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": value["name"], "arguments": json.dumps(value["arguments"], ensure_ascii=False)}}
