"""Sampling seeds through the koserve client against the real tritonserver (tiny random-weight komt, hf mode)."""

from __future__ import annotations

import pytest

from koserve.client import ChatClient
from koserve.client.errors import InvalidParameterError

pytestmark = pytest.mark.server

MSGS = [{"role": "user", "content": "안녕?"}]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unseeded_sampling_differs_and_the_reported_seed_repeats_it(triton_komt, protocol):
    url = triton_komt.grpc_url if protocol == "grpc" else triton_komt.http_url
    with ChatClient(url, "komt-13b", timeout=60) as client:
        results = [client.chat(MSGS, max_tokens=12, temperature=1.0) for _ in range(3)]
        assert len({r.seed for r in results}) == 3 and all(r.seed is not None for r in results)
        assert len({r.text for r in results}) >= 2, [r.text for r in results]
        again = client.chat(MSGS, max_tokens=12, temperature=1.0, seed=results[0].seed)
        assert again.text == results[0].text and again.seed == results[0].seed
        greedy = client.chat(MSGS, max_tokens=12, temperature=0)
        assert greedy.seed is None and client.chat(MSGS, max_tokens=12, temperature=0).text == greedy.text
        # Triton's HTTP JSON would wrap this into an INT32 tensor: refused before sending
        with pytest.raises(InvalidParameterError, match="max_tokens must be between 1 and 4096") as info:
            client.chat(MSGS, max_tokens=4294967300)
        assert info.value.param == "max_tokens"
        assert client.chat(MSGS, max_tokens=3).text is not None  # the server kept serving
