"""The faster ``serialize_byte_tensor`` gives exactly what python backend's own gives, for every tensor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from koserve.triton_models import pb_speedups


def _real_pb_utils():
    """The python backend's own ``triton_python_backend_utils`` (pure Python) from the nvidia-pytriton wheel."""
    pytriton = pytest.importorskip("pytriton")
    path = Path(pytriton.__file__).parent / "tritonserver" / "backends" / "python" / "triton_python_backend_utils.py"
    spec = importlib.util.spec_from_file_location("pb_utils_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _obj(values, shape):
    arr = np.empty(len(values), dtype=np.object_)
    arr[:] = values
    return arr.reshape(shape)


CASES = [
    _obj(["안녕".encode()], (1,)), _obj([b""], (1, 1)), _obj(["🤗 a".encode()], (1, 1)),
    _obj(["text as str"], (1,)),  # not bytes: the original handles it
    _obj([b"a", b"bc"], (1, 2)), np.array([b"x\0"], dtype=np.bytes_), _obj([], (0,)),
]


@pytest.mark.parametrize("arr", CASES, ids=range(len(CASES)))
def test_same_bytes_as_the_python_backend(arr):
    pb = _real_pb_utils()
    original = pb.serialize_byte_tensor
    expected = original(arr)
    assert pb_speedups.install(pb) and pb.serialize_byte_tensor is not original
    assert pb.serialize_byte_tensor(arr) == expected


def test_install_is_idempotent_and_needs_the_function():
    pb = _real_pb_utils()
    assert pb_speedups.install(pb)
    fast = pb.serialize_byte_tensor
    assert pb_speedups.install(pb) and pb.serialize_byte_tensor is fast
    assert fast.original(_obj([b"ab"], (1,))) == b"\x02\0\0\0ab"

    class NoSerializer:
        pass

    assert not pb_speedups.install(NoSerializer)
