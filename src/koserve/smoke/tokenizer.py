"""The tokenizer of gpu-smoke's tiny checkpoint, built in code: no npm, no model hub, nothing downloaded.

It has Llama-3's shape where koserve and TensorRT-LLM look: 128,256 ids, Llama-3's special tokens at Llama-3's ids
(``<|begin_of_text|>`` 128000, ``<|end_of_text|>`` 128001, ``<|start_header_id|>`` 128006, ``<|end_header_id|>``
128007, ``<|eot_id|>`` 128009), a BOS-adding post-processor and a byte-level BPE, so the ``akallama-70b`` profile's
chat format and end ids apply unchanged. Its ordinary vocabulary is the 256 byte-level symbols and every Hangul
syllable (U+AC00..U+D7A3, each merged from its three UTF-8 bytes), padded with unused ``<unused_N>`` entries: any
text encodes (byte-level) and Korean encodes one token per syllable. Every id decodes to valid UTF-8 on its own
except the 128 bytes >= 0x80 and the two-byte syllable heads (pieces of a character, as in Llama-3's own vocabulary).
Random-weight output is not meaningful text; it exercises the real serving path.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 128256
FIRST_SPECIAL_ID = 128000
LLAMA3_SPECIAL_TOKENS = {
    128000: "<|begin_of_text|>",
    128001: "<|end_of_text|>",
    128006: "<|start_header_id|>",
    128007: "<|end_header_id|>",
    128009: "<|eot_id|>",
}
HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3
# Llama-3's pre-tokenizer split (its tokenizer.json's published regex): words, numbers of up to 3 digits, punctuation.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_symbols() -> list[str]:
    """The byte-level alphabet: symbol ``i`` stands for byte ``i`` (printable bytes as themselves, the rest moved
    to U+0100 and up), as ``tokenizers``' ``ByteLevel`` pre-tokenizer and decoder map them."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def special_token(token_id: int) -> str:
    return LLAMA3_SPECIAL_TOKENS.get(token_id, f"<|reserved_special_token_{token_id - FIRST_SPECIAL_ID}|>")


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    symbols = byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    pair_merges: list[tuple[str, str]] = []
    syllable_merges: list[tuple[str, str]] = []
    for code in range(HANGUL_FIRST, HANGUL_LAST + 1):
        b1, b2, b3 = chr(code).encode("utf-8")
        head = symbols[b1] + symbols[b2]
        if head not in vocab:
            vocab[head] = len(vocab)
            pair_merges.append((symbols[b1], symbols[b2]))
        vocab[head + symbols[b3]] = len(vocab)
        syllable_merges.append((head, symbols[b3]))
    for n in range(FIRST_SPECIAL_ID - len(vocab)):
        vocab[f"<unused_{n}>"] = len(vocab)
    for token_id in range(FIRST_SPECIAL_ID, VOCAB_SIZE):
        vocab[special_token(token_id)] = token_id
    return vocab, pair_merges + syllable_merges


def build_tokenizer():
    """The ``tokenizers.Tokenizer`` (needs only the ``tokenizers`` package)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: PLC0415

    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(special_token(i), special=True, normalized=False)
                            for i in range(FIRST_SPECIAL_ID, VOCAB_SIZE)])
    bos = LLAMA3_SPECIAL_TOKENS[FIRST_SPECIAL_ID]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, FIRST_SPECIAL_ID)])
    return tok


TOKENIZER_CONFIG = {
    "bos_token": "<|begin_of_text|>",
    "eos_token": "<|eot_id|>",
    "add_bos_token": True,
    "clean_up_tokenization_spaces": False,
    "model_max_length": 8192,
    "tokenizer_class": "PreTrainedTokenizerFast",
}


def write_tokenizer(dest: Path) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``dest``; returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2), encoding="utf-8")
    return dest
