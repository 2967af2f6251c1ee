"""Small helpers between Triton's python backend (``triton_python_backend_utils``, passed in as ``pb``) and numpy."""

from __future__ import annotations

from typing import Iterable

import numpy as np


def read_inputs(pb, request, names: Iterable[str]) -> dict[str, np.ndarray | None]:
    """``{name: array or None}`` for the named (possibly optional) inputs of a request."""
    out = {}
    for name in names:
        tensor = pb.get_input_tensor_by_name(request, name)
        out[name] = None if tensor is None else tensor.as_numpy()
    return out


def bytes_tensor(pb, name: str, texts: list[str] | str, shape: tuple[int, ...] | None = None):
    """A BYTES tensor of UTF-8 strings (default shape ``[1, len]``; one string → ``[1]``, the shape NVIDIA's
    postprocessing and BLS give ``text_output``: one string per batch item × beam, read as ``out[0].decode()``)."""
    if isinstance(texts, str) and shape is None:  # the per-token case: no list, no reshape
        arr = np.empty((1,), dtype=np.object_)
        arr[0] = texts.encode("utf-8")
        return pb.Tensor(name, arr)
    if isinstance(texts, str):
        texts = [texts]
    arr = np.array([t.encode("utf-8") for t in texts], dtype=np.object_)
    arr = arr.reshape(shape if shape is not None else (1, len(texts)))
    return pb.Tensor(name, arr)


def triton_error(pb, message: str, *, invalid: bool = True, code: str | None = None):
    """A ``pb_utils.TritonError`` with a status code: ``INVALID_ARG`` for request problems (HTTP 400, gRPC
    INVALID_ARGUMENT on unary calls), else ``code`` (``INTERNAL``, ``UNAVAILABLE``, …; default ``INTERNAL``)."""
    name = "INVALID_ARG" if invalid else (code or "INTERNAL")
    value = getattr(pb.TritonError, name, None)
    return pb.TritonError(message) if value is None else pb.TritonError(message, value)


def error_response(pb, message: str, *, invalid: bool = True, code: str | None = None):
    """An error response; see :func:`triton_error` for the code."""
    return pb.InferenceResponse(output_tensors=[], error=triton_error(pb, message, invalid=invalid, code=code))
