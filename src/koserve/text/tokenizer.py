"""Load a Hugging Face fast tokenizer (``tokenizer.json``) without transformers.

Used by Triton's python models, the client and the engine stand-in, so it depends on the ``tokenizers`` library
only. A checkpoint folder and the fixtures from ``koserve setup fixtures`` load the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from koserve.errors import ConfigError, InvalidRequestError

# Used only when a tokenizer has no tokenizer_config.json (or it names no bos/eos token).
_FALLBACK_BOS = ("<|begin_of_text|>", "<s>", "<bos>")
_FALLBACK_EOS = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>")


@dataclass(frozen=True, eq=False)
class TextTokenizer:
    """A ``tokenizers.Tokenizer`` plus what ``tokenizer_config.json`` says about BOS/EOS.

    ``encode(text)`` adds BOS exactly when ``add_bos`` is true (whatever the ``tokenizer.json`` post-processor does,
    see :func:`load_tokenizer`) and never doubles it when the text itself starts with the BOS token.
    """

    backend: Tokenizer = field(repr=False)
    bos_token: str | None
    bos_id: int | None
    eos_token: str | None
    eos_id: int | None
    add_bos: bool
    path: Path
    #: ids of added tokens marked special (``<s>``, ``<|eot_id|>``, …): no text when decoding with skip_special_tokens
    special_ids: frozenset[int] = field(repr=False)
    #: ``<0xNN>`` token id → byte value, when the decoder has a ByteFallback step (Llama-2); else empty
    byte_values: dict[int, int] = field(repr=False)
    #: byte value → ``<0xNN>`` token id (empty without byte fallback)
    byte_token_ids: tuple[int, ...] = field(repr=False)
    #: the ``<0xNN>`` token ids (empty without byte fallback)
    byte_fallback_ids: frozenset[int] = field(repr=False)
    _backend_adds_bos: bool = field(repr=False, default=False)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (Llama-3: 128,256; Llama-2: 32,000)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` a BOS is added when ``add_bos`` (never twice)."""
        if not isinstance(text, str):
            raise InvalidRequestError(f"text to encode must be a str, got {type(text).__name__}")
        ids = self.backend.encode(text, add_special_tokens=add_special_tokens).ids
        if not add_special_tokens or self.bos_id is None:
            return ids
        bos = self.bos_id
        if self.add_bos and not self._backend_adds_bos:
            if not ids or ids[0] != bos:
                ids.insert(0, bos)
        elif not self.add_bos and self._backend_adds_bos:
            if ids and ids[0] == bos:
                del ids[0]
        if self.add_bos and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
            del ids[0]  # the text began with the BOS token itself (e.g. a rendered Llama-3 chat prompt)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or a 1-D numpy array); special tokens give no text unless asked.

        Equal to the ``tokenizers`` (Hugging Face fast tokenizer) decode, except for byte-fallback runs that are not
        valid UTF-8: ``ByteFallback`` turns such a whole run into one U+FFFD per byte token (``f`` ``?`` ``<0x96>``
        → three U+FFFD), whereas we replace only the invalid bytes, as SentencePiece does (``f?\ufffd``). That
        keeps text already streamed by :class:`~koserve.text.IncrementalDetokenizer` final.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.byte_values and "\ufffd" in text:
            text = self.backend.decode(self._repair_byte_runs(ids, skip_special_tokens), skip_special_tokens)
        return text

    def _repair_byte_runs(self, ids: list[int], skip_special_tokens: bool) -> list[int]:
        """Replace each byte-fallback run by the byte tokens of its lossy UTF-8 decoding (valid UTF-8 throughout)."""
        values, tokens = self.byte_values, self.byte_token_ids
        skipped = self.special_ids if skip_special_tokens else frozenset()
        out: list[int] = []
        run = bytearray()
        for token_id in ids:
            if token_id in skipped:
                continue  # skipped specials never reach the decoder, so they do not split a run
            value = values.get(token_id)
            if value is not None:
                run.append(value)
                continue
            if run:
                out.extend(tokens[b] for b in run.decode("utf-8", "replace").encode("utf-8"))
                run.clear()
            out.append(token_id)
        if run:
            out.extend(tokens[b] for b in run.decode("utf-8", "replace").encode("utf-8"))
        return out


def _token_content(value: Any, key: str, config_path: Path) -> str | None:
    """``bos_token``/``eos_token`` are a string or an AddedToken dict (``{"content": ...}``) or null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ConfigError(f"{config_path}: {key} must be a string or {{\"content\": ...}}, got {value!r}")


def _resolve_token(
    backend: Tokenizer, configured: str | None, fallbacks: tuple[str, ...], key: str, config_path: Path | None
) -> tuple[str | None, int | None]:
    if configured is not None:
        token_id = backend.token_to_id(configured)
        if token_id is None:
            raise ConfigError(f"{config_path}: {key} {configured!r} is not in the tokenizer's vocabulary")
        return configured, token_id
    for candidate in fallbacks:
        token_id = backend.token_to_id(candidate)
        if token_id is not None:
            return candidate, token_id
    return None, None


def _byte_values(backend: Tokenizer) -> dict[int, int]:
    decoder = backend.decoder
    if decoder is None or b'"ByteFallback"' not in decoder.__getstate__():
        return {}
    values = {}
    for value in range(256):
        token_id = backend.token_to_id(f"<0x{value:02X}>")
        if token_id is not None:
            values[token_id] = value
    if len(values) != 256:
        raise ConfigError(f"the tokenizer's decoder uses byte fallback but only {len(values)} of the 256 <0xNN> "
                          "byte tokens are in its vocabulary")
    return values


def _find_files(path: Path) -> tuple[Path, Path | None]:
    if path.is_dir():
        tokenizer_json = path / "tokenizer.json"
        if not tokenizer_json.is_file():
            hint = ""
            if (path / "tokenizer.model").is_file():
                hint = " (there is only a SentencePiece/tiktoken tokenizer.model; koserve needs tokenizer.json)"
            raise ConfigError(f"no tokenizer.json in {path}{hint}")
    elif path.is_file():
        tokenizer_json = path
    else:
        raise ConfigError(f"tokenizer path {path} does not exist")
    config = tokenizer_json.parent / "tokenizer_config.json"
    return tokenizer_json, config if config.is_file() else None


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """Load the tokenizer of a checkpoint/tokenizer folder or of a ``tokenizer.json`` file.

    ``tokenizer_config.json`` next to it, when present, names the BOS/EOS tokens and may set ``add_bos_token``.
    Whether BOS is added: ``add_bos_token`` when the config sets it (as transformers does), otherwise what the
    ``tokenizer.json`` post-processor actually does (the first Meta-Llama-3 revision adds none, later ones do).
    """
    path = Path(path).expanduser()
    tokenizer_json, config_path = _find_files(path)
    try:
        backend = Tokenizer.from_file(str(tokenizer_json))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise ConfigError(f"{tokenizer_json} is not a valid tokenizer.json: {exc}") from None

    config: dict[str, Any] = {}
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{config_path} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"{config_path} must hold a JSON object, got {type(config).__name__}")

    bos_token, bos_id = _resolve_token(
        backend, _token_content(config.get("bos_token"), "bos_token", config_path), _FALLBACK_BOS, "bos_token",
        config_path,
    )
    eos_token, eos_id = _resolve_token(
        backend, _token_content(config.get("eos_token"), "eos_token", config_path), _FALLBACK_EOS, "eos_token",
        config_path,
    )

    backend_adds_bos = False
    if bos_id is not None:
        with_special = backend.encode("a", add_special_tokens=True).ids
        without = backend.encode("a", add_special_tokens=False).ids
        backend_adds_bos = bool(with_special) and with_special[0] == bos_id and (not without or without[0] != bos_id)
    add_bos_setting = config.get("add_bos_token")
    if add_bos_setting is not None and not isinstance(add_bos_setting, bool):
        raise ConfigError(f"{config_path}: add_bos_token must be true or false, got {add_bos_setting!r}")
    add_bos = (add_bos_setting if add_bos_setting is not None else backend_adds_bos) and bos_id is not None

    special_ids = frozenset(i for i, tok in backend.get_added_tokens_decoder().items() if tok.special)
    byte_values = _byte_values(backend)
    return TextTokenizer(
        backend=backend,
        bos_token=bos_token,
        bos_id=bos_id,
        eos_token=eos_token,
        eos_id=eos_id,
        add_bos=add_bos,
        path=tokenizer_json.parent,
        special_ids=special_ids,
        byte_values=byte_values,
        byte_token_ids=tuple(sorted(byte_values, key=byte_values.__getitem__)),
        byte_fallback_ids=frozenset(byte_values),
        _backend_adds_bos=backend_adds_bos,
    )
