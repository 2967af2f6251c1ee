"""The xgrammar tokenizer-info file of TensorRT-LLM's C++ backend (``xgrammar_tokenizer_info_path``).

NVIDIA writes it with ``examples/generate_xgrammar_tokenizer_info.py`` (NVIDIA/TensorRT-LLM, release/1.2.1), which
calls ``tensorrt_llm.llmapi.tokenizer._xgrammar_tokenizer_info``: a JSON object with ``encoded_vocab`` (every
token's string, ordered by id, added tokens included), ``tokenizer_str`` (the fast tokenizer's ``tokenizer.json``)
and ``stop_token_ids``. The backend reads exactly those three keys (``model_instance_state.cc``
``getGuidedDecodingConfigFromParams``). koserve writes the same from ``tokenizer.json`` with ``tokenizers`` (no
``tensorrt_llm`` import), with one difference: ``stop_token_ids`` are the profile's end ids (NVIDIA's script takes
only ``eos_token_id``), so a finished guide may end with any token the model ends its turn with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from koserve.errors import ConfigError

TOKENIZER_INFO_FILE = "xgrammar_tokenizer_info.json"


def tokenizer_info(tokenizer_dir: str | os.PathLike, stop_token_ids) -> dict:
    """The three keys NVIDIA's backend reads, from ``tokenizer_dir/tokenizer.json``."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    path = Path(tokenizer_dir)
    tok_file = path / "tokenizer.json" if path.is_dir() else path
    if not tok_file.is_file():
        raise ConfigError(f"no tokenizer.json at {tok_file}: the xgrammar tokenizer info needs a fast tokenizer")
    tokenizer_str = tok_file.read_text(encoding="utf-8")
    vocab = Tokenizer.from_str(tokenizer_str).get_vocab(with_added_tokens=True)
    encoded_vocab = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    stops = [int(t) for t in stop_token_ids]
    if not stops:
        raise ConfigError("the xgrammar tokenizer info needs at least one stop token id")
    return {"encoded_vocab": encoded_vocab, "tokenizer_str": tokenizer_str, "stop_token_ids": stops}


def write_tokenizer_info(tokenizer_dir: str | os.PathLike, stop_token_ids, dest: str | os.PathLike) -> Path:
    """Write :func:`tokenizer_info` to ``dest`` (a file path) and return it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(tokenizer_info(tokenizer_dir, stop_token_ids), ensure_ascii=False), encoding="utf-8")
    return dest
