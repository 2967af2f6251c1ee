"""load_tokenizer / TextTokenizer against the real Llama-3 and Llama-2 tokenizers."""

from __future__ import annotations

import json
import shutil

import pytest

from koserve.errors import ConfigError, InvalidRequestError
from koserve.fixtures import tokenizer_dir
from koserve.text import load_tokenizer

KOREAN = "안녕하세요, 반갑습니다"


def test_llama3_known_ids(llama3):
    assert llama3.encode("Hello world", add_special_tokens=False) == [9906, 1917]
    assert llama3.encode("Hello world") == [128000, 9906, 1917]
    assert llama3.encode(KOREAN, add_special_tokens=False) == [101193, 124409, 11, 64857, 115072, 39331]
    assert (llama3.bos_token, llama3.bos_id) == ("<|begin_of_text|>", 128000)
    assert (llama3.eos_token, llama3.eos_id) == ("<|eot_id|>", 128009)
    assert llama3.add_bos is True
    assert llama3.vocab_size == 128256
    assert llama3.token_to_id("<|end_of_text|>") == 128001
    assert llama3.token_to_id("<|start_header_id|>") == 128006
    assert {128000, 128001, 128009} <= llama3.special_ids
    assert llama3.byte_fallback_ids == frozenset()


def test_llama2_known_ids(llama2):
    assert llama2.encode("Hello world") == [1, 15043, 3186]
    assert llama2.encode("[INST]", add_special_tokens=False) == [518, 25580, 29962]
    ids = llama2.encode(KOREAN, add_special_tokens=False)
    assert len(ids) == 21
    assert sum(i in llama2.byte_fallback_ids for i in ids) == 12
    # 녕 (U+B155, UTF-8 EB 85 95) has no piece of its own: three byte-fallback tokens.
    assert [llama2.id_to_token(i) for i in llama2.encode("녕", add_special_tokens=False)] == [
        "▁", "<0xEB>", "<0x85>", "<0x95>"
    ]
    assert (llama2.bos_id, llama2.eos_id, llama2.add_bos, llama2.vocab_size) == (1, 2, True, 32000)
    assert llama2.special_ids == frozenset({0, 1, 2})
    assert len(llama2.byte_fallback_ids) == 256


def test_decode_round_trip(tok):
    for text in ("Hello world", KOREAN, " 앞 공백과\n줄바꿈  그리고 😀👍🏽", "###"):
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    ids = tok.encode("a") + [tok.eos_id]
    assert tok.eos_token not in tok.decode(ids)
    assert tok.decode(ids, skip_special_tokens=False).endswith(tok.eos_token)


def test_bos_never_doubled(llama3, llama2):
    assert llama3.encode("<|begin_of_text|>Hi") == [128000, 13347]
    assert llama2.encode("<s>Hi")[:2] == [1, llama2.encode("Hi", add_special_tokens=False)[0]]
    assert llama2.encode("<s>Hi").count(1) == 1


def test_loads_from_file_path(tmp_path):
    src = tokenizer_dir("llama2")
    tok = load_tokenizer(src / "tokenizer.json")
    assert tok.encode("Hello world") == [1, 15043, 3186]
    assert tok.path == src


@pytest.fixture(scope="module")
def llama3_json():
    """The Llama-3 tokenizer.json as it is, and as the first Meta-Llama-3 revision had it (no BOS added)."""
    text = (tokenizer_dir("llama3") / "tokenizer.json").read_text(encoding="utf-8")
    data = json.loads(text)
    data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    return {True: text, False: json.dumps(data)}


def _llama3_copy(tmp_path, llama3_json, *, config: dict | None, keep_post_processor: bool):
    (tmp_path / "tokenizer.json").write_text(llama3_json[keep_post_processor], encoding="utf-8")
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return load_tokenizer(tmp_path)


def test_bos_detected_from_post_processor_without_config(tmp_path, llama3_json):
    tok = _llama3_copy(tmp_path, llama3_json, config=None, keep_post_processor=False)
    assert tok.add_bos is False
    assert tok.encode("Hello world") == [9906, 1917]
    # Without a config the usual names are used.
    assert (tok.bos_id, tok.eos_token, tok.eos_id) == (128000, "<|end_of_text|>", 128001)


def test_config_add_bos_token_wins(tmp_path, llama3_json):
    tok = _llama3_copy(tmp_path, llama3_json, config={"bos_token": "<|begin_of_text|>", "add_bos_token": True},
                       keep_post_processor=False)
    assert tok.add_bos is True
    assert tok.encode("Hello world") == [128000, 9906, 1917]
    assert tok.encode("Hello world", add_special_tokens=False) == [9906, 1917]


def test_config_add_bos_false_strips_post_processor_bos(tmp_path, llama3_json):
    config = {"bos_token": {"content": "<|begin_of_text|>"}, "add_bos_token": False}
    tok = _llama3_copy(tmp_path, llama3_json, config=config, keep_post_processor=True)
    assert tok.add_bos is False
    assert tok.encode("Hello world") == [9906, 1917]


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"eos_token": "<|no_such_token|>"}), "not in the tokenizer's vocabulary"),
        (json.dumps({"bos_token": 5}), "bos_token must be a string"),
        (json.dumps({"add_bos_token": "yes"}), "add_bos_token must be true or false"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path, config, message):
    shutil.copy(tokenizer_dir("llama2") / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(config, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_tokenizer(tmp_path)


def test_missing_or_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\0")
    with pytest.raises(ConfigError, match="tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path)


def test_encode_rejects_non_text(llama2):
    with pytest.raises(InvalidRequestError, match="must be a str"):
        llama2.encode(b"bytes")
