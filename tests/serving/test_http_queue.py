"""Triton's HTTP response queue room (``koserve.server.http_queue``) and the warning ``koserve serve`` prints when it is
small and HTTP is on."""

from __future__ import annotations

import pytest


def test_http_response_queue_capacity_follows_the_send_buffer():
    from koserve.server.http_queue import http_response_queue_capacity

    small, large = http_response_queue_capacity(sndbuf=8192), http_response_queue_capacity(sndbuf=65536)
    assert 0 < small < large
    assert http_response_queue_capacity(sndbuf=65536, limit=5) == 5


@pytest.mark.parametrize(
    ("extra", "capacity", "warned"),
    [
        ((), 278, True),
        ((), 5462, False),
        (("--allow-http=false",), 278, False),
        (("--allow-http", "0"), 278, False),
        (("--allow-http=true",), 278, True),
        (("--allow-http=false", "--allow-http", "true"), 278, True),  # tritonserver takes the last one
    ],
)
def test_http_stream_warning(extra, capacity, warned):
    from koserve.server.http_queue import http_stream_warning

    warning = http_stream_warning(extra, capacity=capacity)
    if not warned:
        assert warning is None
        return
    assert f"only {capacity} streamed responses" in warning
    assert "net.core.wmem_default=" in warning and "gRPC" in warning and "tensorrt_llm_bls" in warning
