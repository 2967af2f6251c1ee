"""How the BLS finds its own server's gRPC endpoint (``koserve.triton_models.server_url``) from a tritonserver command
line."""

from __future__ import annotations

import pytest

from koserve.triton_models.server_url import grpc_url_from_cmdline


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        (["--model-repository=/r", "--grpc-port=8123", "--grpc-address=127.0.0.1"], "127.0.0.1:8123"),
        (["--grpc-port", "9001", "--grpc-address", "0.0.0.0"], "127.0.0.1:9001"),
        (["--model-repository=/r"], "127.0.0.1:8001"),
        (["--grpc-port=8123", "--allow-grpc=false"], None),
    ],
)
def test_grpc_url_from_cmdline(argv, url):
    assert grpc_url_from_cmdline(argv) == url
