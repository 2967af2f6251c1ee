"""The engine's gRPC messages (``koserve.triton_models.engine_wire``): streamed responses decode to the same ids as the
general path; a request's error and the stream's end carry Triton error codes from the wire (the stream's
``grpc-status``), never guessed from the message text."""

from __future__ import annotations

import numpy as np
import pytest

from koserve.triton_models.engine_h2 import stream_status
from koserve.triton_models.engine_wire import REQUEST_ERROR_CODE, chunk_from_proto, route_response, triton_code
from koserve.triton_models.postprocess import tokens_of


def _response(ids_shape, ids, seq, order=("output_ids", "sequence_length"), seq_dtype="INT32"):
    from tritonclient.grpc import service_pb2

    r = service_pb2.ModelInferResponse(id="r")
    arrays = {"output_ids": (np.asarray(ids, dtype=np.int32).reshape(ids_shape), "INT32"),
              "sequence_length": (np.asarray(seq, dtype=np.int32 if seq_dtype == "INT32" else np.int64), seq_dtype)}
    for name in order:
        arr, dtype = arrays[name]
        out = r.outputs.add()
        out.name, out.datatype = name, dtype
        out.shape.extend(arr.shape)
        r.raw_output_contents.append(arr.tobytes())
    return r, arrays


@pytest.mark.parametrize("shape,ids,seq", [
    ((1, 1, 1), [7], [[1]]),
    ((1, 1, 3), [7, 8, 9], [[3]]),
    ((1, 1, 3), [7, 8, 9], [[2]]),  # cut at the length
    ((1, 2, 3), [7, 8, 9, 4, 5, 6], [[3, 1]]),  # beams: beam 0
    ((1, 1, 0), [], [[0]]),
    ((1, 1, 2), [7, 8], [[5]]),  # a length beyond the ids: all of them
])
@pytest.mark.parametrize("order", [("output_ids", "sequence_length"), ("sequence_length", "output_ids")])
def test_streamed_responses_decode_to_the_same_ids_as_the_general_path(shape, ids, seq, order):
    r, arrays = _response(shape, ids, seq, order)
    expected = tokens_of(arrays["output_ids"][0], arrays["sequence_length"][0])
    chunk = chunk_from_proto(r, final=True)
    assert chunk.final and chunk.ids.dtype == np.int32
    assert chunk.ids.tolist() == expected.tolist()


def test_unusual_responses_take_the_general_path():
    r, arrays = _response((1, 1, 2), [7, 8], [[1]], seq_dtype="INT64")
    assert chunk_from_proto(r, final=False).ids.tolist() == [7]


@pytest.mark.parametrize(("headers", "status"), [
    ([(":status", "200"), ("content-type", "application/grpc")], None),
    ([("grpc-status", "0")], None),
    ([("grpc-status", "14"), ("grpc-message", "Socket%20closed")],
     ("the engine stream failed: gRPC status 14: Socket closed", "UNAVAILABLE")),
    ([(b"grpc-status", b"3"), (b"grpc-message", b"bad")],
     ("the engine stream failed: gRPC status 3: bad", "INVALID_ARG")),
    # the code comes from grpc-status alone: a message that reads like a client error does not change it
    ([("grpc-status", "13"), ("grpc-message", "input must be shorter: invalid")],
     ("the engine stream failed: gRPC status 13: input must be shorter: invalid", "INTERNAL")),
])
def test_stream_status_maps_grpc_status_to_a_triton_code(headers, status):
    assert stream_status(headers) == status


@pytest.mark.parametrize(("grpc_status", "code"), [
    (1, "CANCELLED"), (3, "INVALID_ARG"), (5, "NOT_FOUND"), (12, "UNSUPPORTED"), (13, "INTERNAL"), (14, "UNAVAILABLE"),
    (4, "UNAVAILABLE"), (99, "INTERNAL"),
])
def test_triton_code_of_each_grpc_status(grpc_status, code):
    assert triton_code(grpc_status) == code


class _Handler:
    def __init__(self):
        self.chunks, self.errors = [], []

    def on_chunk(self, chunk):
        self.chunks.append(chunk)

    def on_error(self, message, code):
        self.errors.append((message, code))


@pytest.mark.parametrize("message", ["max_tokens must be >= 1", "input length 400 exceeds 384", "engine exploded"])
def test_a_request_error_on_the_shared_stream_has_one_code_whatever_its_text(message):
    """Triton's stream handler sends a request's error as text only (no status per message): the code cannot come
    from the wire, and never comes from the text."""
    from tritonclient.grpc import service_pb2

    msg = service_pb2.ModelStreamInferResponse(error_message=message)
    msg.infer_response.id = "r1"
    handler, other = _Handler(), _Handler()
    routes = {"r1": handler, "r2": other}
    route_response(msg, routes)
    assert handler.errors == [(message, REQUEST_ERROR_CODE)] and REQUEST_ERROR_CODE == "INTERNAL"
    assert routes == {"r2": other} and not other.errors  # only that request ends


def test_responses_are_routed_by_id_and_the_final_one_forgets_it():
    r, _ = _response((1, 1, 1), [7], [[1]])
    from tritonclient.grpc import service_pb2

    handler = _Handler()
    routes = {"r1": handler}
    for final in (False, True):
        msg = service_pb2.ModelStreamInferResponse()
        msg.infer_response.CopyFrom(r)
        msg.infer_response.id = "r1"
        msg.infer_response.parameters["triton_final_response"].bool_param = final
        route_response(msg, routes)
    assert [c.ids.tolist() for c in handler.chunks] == [[7], [7]] and handler.chunks[-1].final
    assert routes == {}
    route_response(msg, routes)  # a response for an id no longer routed is dropped
    assert len(handler.chunks) == 2
