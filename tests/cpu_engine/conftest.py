"""Fixtures for the engine stand-in tests: the tiny random Llama-3 checkpoint and real tokenizers from
`koserve setup fixtures`, and one shared hf engine (loading it takes a few seconds)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from koserve.fixtures import tiny_model_dir, tokenizer_dir


@pytest.fixture(scope="session")
def tiny_llama3():
    return tiny_model_dir("llama3")


@pytest.fixture(scope="session")
def llama3_tokenizer():
    return Tokenizer.from_file(str(tokenizer_dir("llama3") / "tokenizer.json"))


@pytest.fixture(scope="session")
def llama2_tokenizer():
    return Tokenizer.from_file(str(tokenizer_dir("llama2") / "tokenizer.json"))


@pytest.fixture(scope="session")
def hf_engine(tiny_llama3):
    from koserve.cpu_engine.hf import HFEngine

    engine = HFEngine(tiny_llama3, max_batch_size=4, max_queue_size=8)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def prompt_ids(llama3_tokenizer):
    return tuple(llama3_tokenizer.encode("네 이름은 뭐야? 한국어로 대답해 줘.", add_special_tokens=False).ids)
