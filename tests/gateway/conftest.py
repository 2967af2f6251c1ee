"""Gateway test helpers: ``gateway_at`` — a context manager serving a gateway config with uvicorn on a free port."""

from __future__ import annotations


import pytest

from koserve.testing.gateway import serve_gateway


@pytest.fixture
def gateway_at():
    """``with gateway_at(config) as base_url: ...``"""
    return serve_gateway
