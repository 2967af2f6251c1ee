"""Shared fixtures for koserve.text tests: the real Llama-3 / Llama-2 tokenizers from `koserve setup fixtures`."""

from __future__ import annotations

import pytest

from koserve.fixtures import tokenizer_dir
from koserve.text import load_tokenizer


@pytest.fixture(scope="session")
def llama3():
    return load_tokenizer(tokenizer_dir("llama3"))


@pytest.fixture(scope="session")
def llama2():
    return load_tokenizer(tokenizer_dir("llama2"))


@pytest.fixture(scope="session", params=["llama3", "llama2"])
def tok(request):
    return request.getfixturevalue(request.param)
