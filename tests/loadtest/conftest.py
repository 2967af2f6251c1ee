"""Servers for the load-test tests: real tritonservers over the rendered koserve repository with the replay engine
(the stand-in's built-in Korean text, one token every REPLAY_DELAY_MS), from the shared `triton_servers` factory;
the test that stops its server mid-run gets a server of its own."""

from __future__ import annotations

import pytest

from koserve.fixtures import tokenizer_dir
from koserve.cpu_engine.replay import load_replay_tokens

REPLAY_DELAY_MS = 20.0
FAMILY = {"akallama-70b": "llama3", "komt-13b": "llama2"}
# room for the long prompt set with AkaLlama's system prompt (up to ~700 tokens)
LIMITS = {"max_input_len": 1536, "max_seq_len": 2048, "max_batch_size": 16}


@pytest.fixture(scope="session")
def replay_llama3(triton_servers):
    """akallama-70b profile, replay engine at REPLAY_DELAY_MS per token (shared)."""
    return triton_servers("akallama-70b", "replay", replay_delay_ms=REPLAY_DELAY_MS, **LIMITS)


@pytest.fixture
def replay_komt(tmp_path):
    """komt-13b profile, replay engine; a server of its own because the test using it stops it."""
    from koserve.testing.stack import serve_cpu

    with serve_cpu("komt-13b", "replay", replay_delay_ms=REPLAY_DELAY_MS, workdir=tmp_path / "triton",
                   **LIMITS) as endpoints:
        yield endpoints


@pytest.fixture(scope="session")
def replay_ids():
    """``replay_ids(profile)``: the token ids the replay engine emits (its built-in Korean text, tokenized)."""
    return lambda profile: load_replay_tokens(tokenizer_dir(FAMILY[profile]))


@pytest.fixture(scope="session")
def token_counter():
    """``token_counter(profile)``: the load generator's token counter for a profile's tokenizer."""
    from koserve.loadtest.prompts import TokenCounter

    return lambda profile: TokenCounter(tokenizer_dir(FAMILY[profile]))


class FakeClock:
    """A clock the test moves by hand (``clock.t += 0.1``)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def make_record():
    """``make_record(**fields)``: a finished request record, a successful 4-token one unless told otherwise."""
    from koserve.loadtest.metrics import StreamRecord

    def make(**kw) -> StreamRecord:
        base = dict(protocol="grpc", model="ensemble", prompt_id="p", start=1000.0, end=1001.0, input_chars=10,
                    input_tokens=5, max_tokens=4, ttft=0.1, itls=[0.02, 0.03, 0.02], e2e=1.0, chunks=4,
                    output_tokens=4, output_chars=8, concurrency=1)
        base.update(kw)
        return StreamRecord(**base)

    return make
