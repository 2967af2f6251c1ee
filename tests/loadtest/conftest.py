"""Servers for the load-test tests: real tritonservers over the rendered koserve repository with the replay engine
(a fixed Korean token sequence at a fixed pace), started and stopped here because one test stops its server."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from koserve.fixtures import tokenizer_dir
from koserve.serving.engine.replay import load_replay_tokens

REPLAY_DELAY_MS = 20.0
FAMILY = {"akallama-70b": "llama3", "komt-13b": "llama2"}


@contextlib.contextmanager
def replay_server(tmp: Path, profile: str, delay_ms: float):
    from koserve.serving.render import RenderOptions, render_repository
    from koserve.serving.tritonserver import ServerOptions, TritonServer

    repo = tmp / f"repo-{profile}"
    render_repository(
        RenderOptions(profile=profile, tokenizer_dir=tokenizer_dir(FAMILY[profile]), out=repo, replay=True,
                      replay_delay_ms=delay_ms, max_batch_size=16, force=True)
    )
    server = TritonServer.cpu(ServerOptions(model_repository=repo), log_path=tmp / f"triton-{profile}.log")
    server.start(timeout=120)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def replay_llama3(tmp_path_factory):
    """akallama-70b profile, replay engine at REPLAY_DELAY_MS per token (shared by a module's tests)."""
    with replay_server(tmp_path_factory.mktemp("lt-llama3"), "akallama-70b", REPLAY_DELAY_MS) as server:
        yield server


@pytest.fixture
def replay_komt(tmp_path):
    """komt-13b profile, replay engine; function-scoped because the test using it stops it."""
    with replay_server(tmp_path, "komt-13b", REPLAY_DELAY_MS) as server:
        yield server


@pytest.fixture(scope="session")
def replay_ids():
    """``replay_ids(profile)``: the token ids the replay engine emits (its built-in Korean text, tokenized)."""
    return lambda profile: load_replay_tokens(tokenizer_dir(FAMILY[profile]))


@pytest.fixture(scope="session")
def token_counter():
    """``token_counter(profile)``: the load generator's token counter for a profile's tokenizer."""
    from koserve.loadtest.prompts import TokenCounter

    return lambda profile: TokenCounter(tokenizer_dir(FAMILY[profile]))
