"""Helpers shared by the client tests that run against real tritonservers (the servers: tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def url_of():
    """``url_of(endpoints, protocol)``: the server's URL for ``"grpc"`` or ``"http"``."""
    return lambda endpoints, protocol: endpoints.grpc_url if protocol == "grpc" else endpoints.http_url


@pytest.fixture(scope="session")
def replay_text(replay_text_file) -> str:
    """The text the replay engine generates."""
    return replay_text_file.read_text(encoding="utf-8")
