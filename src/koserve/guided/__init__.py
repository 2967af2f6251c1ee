"""Guided decoding (structured output) shared by the client, the gateway, the Triton models and the engines.

TensorRT-LLM 1.2.1 takes a guide per request as two BYTES inputs, ``guided_decoding_guide_type`` and
``guided_decoding_guide`` (triton_backend ``inflight_batcher_llm/src/utils.cc`` ``getGuidedDecodingParamsFromTensors``),
and masks the engine's logits with xgrammar. :mod:`koserve.guided.spec` validates a guide before it reaches an engine;
:mod:`koserve.guided.tokenizer_info` writes the tokenizer file the C++ backend's xgrammar needs.
"""

from koserve.guided.spec import (
    GUIDE_TYPES,
    MAX_GUIDE_BYTES,
    MAX_SCHEMA_DEPTH,
    UNSUPPORTED_SCHEMA_KEYWORDS,
    GuidedDecoding,
    check_json_schema,
    parse_guided_decoding,
)

__all__ = [
    "GUIDE_TYPES",
    "MAX_GUIDE_BYTES",
    "MAX_SCHEMA_DEPTH",
    "UNSUPPORTED_SCHEMA_KEYWORDS",
    "GuidedDecoding",
    "check_json_schema",
    "parse_guided_decoding",
]
