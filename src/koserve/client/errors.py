"""What can go wrong when talking to Triton, as exceptions that say what failed.

Every transport maps tritonclient / gRPC / httpx failures onto these; no raw tritonclient exception escapes for an
expected failure (server down, server error, timeout, bad parameter).
"""

from __future__ import annotations

from koserve.errors import InvalidRequestError, KoserveError

__all__ = [
    "ClientError",
    "InvalidParameterError",
    "InvalidRequestError",
    "RequestTimeoutError",
    "ServerError",
    "ServerUnavailableError",
]


class InvalidParameterError(InvalidRequestError):
    """A request parameter is out of range or malformed; ``param`` names it (as the caller spelled it)."""

    def __init__(self, message: str, *, param: str):
        super().__init__(message)
        self.param = param


class ClientError(KoserveError):
    """A request to Triton failed."""


class ServerUnavailableError(ClientError):
    """The server could not be reached (nothing listening, connection refused or lost, gRPC UNAVAILABLE)."""


class ServerError(ClientError):
    """The server answered with an error (unknown model, invalid input, model failure, ...).

    ``message`` is the server's own error text; ``status`` the gRPC status / HTTP code when there was one.
    """

    def __init__(self, message: str, *, status: str | int | None = None, server_message: str | None = None):
        super().__init__(message)
        self.status = status
        self.server_message = server_message if server_message is not None else message


class RequestTimeoutError(ClientError, TimeoutError):
    """The request did not complete within its deadline (the server-side request was cancelled)."""
