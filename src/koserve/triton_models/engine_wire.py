"""The engine's gRPC messages: requests as tritonclient's ``ModelInferRequest`` protobufs, responses decoded into
:class:`~koserve.triton_models.engine_types.EngineChunk` and routed by request id, and gRPC statuses as Triton error
codes.

Error codes come from the wire, never from message text. A failed request on the shared ``ModelStreamInfer`` stream
arrives as a message with ``error_message`` and no status: Triton's stream handler keeps only the message
(triton-inference-server/server ``src/grpc/stream_infer_handler.cc``: ``response->set_error_message(
status.error_message())``; its ``triton_grpc_error`` mode would close the whole shared stream instead). Such an error
is :data:`REQUEST_ERROR_CODE`: the BLS checks every request against the engine's limits before sending it, so the
engine refusing one is the server's problem, not the client's (NVIDIA's BLS answers engine errors the same way). The
stream's own end carries ``grpc-status`` in its trailers: :func:`triton_code` maps it.
"""

from __future__ import annotations

import logging
import struct

import numpy as np

from koserve.triton_models.engine_types import EngineChunk, EngineHandler
from koserve.triton_models.postprocess import tokens_of

log = logging.getLogger("koserve")

REQUEST_ERROR_CODE = "INTERNAL"  # a request's error on the shared stream (no status on the wire: see module doc)
# gRPC status code -> Triton error code (TRITONSERVER_Error_Code names, as pb_utils.TritonError has them)
_TRITON_CODES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARG", 4: "UNAVAILABLE", 5: "NOT_FOUND", 6: "ALREADY_EXISTS",
    8: "UNAVAILABLE", 12: "UNSUPPORTED", 13: "INTERNAL", 14: "UNAVAILABLE",
}


def triton_code(grpc_status: int) -> str:
    """The Triton error code for a gRPC status code (anything unlisted: ``INTERNAL``)."""
    return _TRITON_CODES.get(grpc_status, "INTERNAL")


def stop_tensors() -> dict[str, np.ndarray]:
    """The tensors of a TensorRT-LLM ``stop`` request (the request id says which request to stop)."""
    return {
        "input_ids": np.zeros((1, 1), dtype=np.int32),
        "input_lengths": np.ones((1, 1), dtype=np.int32),
        "request_output_len": np.ones((1, 1), dtype=np.int32),
        "stop": np.array([[True]], dtype=np.bool_),
    }


_NP_DTYPES = {
    "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP64": np.float64, "FP16": np.float16,
    "BOOL": np.bool_, "UINT64": np.uint64, "UINT32": np.uint32, "INT8": np.int8, "UINT8": np.uint8,
}


def request_proto(model: str, tensors: dict[str, np.ndarray], outputs: list[str], request_id: str):
    """A ``ModelInferRequest`` (tritonclient's protobufs) with raw input contents."""
    from tritonclient.grpc import service_pb2  # noqa: PLC0415
    from tritonclient.utils import np_to_triton_dtype  # noqa: PLC0415

    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, arr in tensors.items():
        t = req.inputs.add()
        t.name, t.datatype = name, np_to_triton_dtype(arr.dtype)
        t.shape.extend(arr.shape)
        if arr.dtype == np.object_:  # BYTES (guided_decoding_guide): Triton's length-prefixed elements
            from tritonclient.utils import serialize_byte_tensor  # noqa: PLC0415

            req.raw_input_contents.append(serialize_byte_tensor(arr).item())
        else:
            req.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
    for name in outputs:
        req.outputs.add().name = name
    req.parameters["triton_enable_empty_final_response"].bool_param = True
    return req


def chunk_from_proto(response, final: bool) -> EngineChunk:
    """An :class:`EngineChunk` from a ``ModelInferResponse`` (one pass over its outputs, raw contents)."""
    return _chunk_of_response(response, response.outputs, final)


def _chunk_of_response(response, outputs, final: bool) -> EngineChunk:
    raw = response.raw_output_contents
    fast = _streamed_ids(outputs, raw)
    if fast is not None:
        return EngineChunk(fast, None, None, final)
    arrays = {}
    for index, output in enumerate(outputs):
        dtype = _NP_DTYPES.get(output.datatype)
        if dtype is None or index >= len(raw):  # anything unusual: tritonclient's general decoder
            from tritonclient.grpc import InferResult  # noqa: PLC0415

            arrays[output.name] = InferResult(response).as_numpy(output.name)
        else:
            arrays[output.name] = np.frombuffer(raw[index], dtype=dtype).reshape(tuple(output.shape))
    return chunk_of(arrays.get, final)


_INT32 = np.dtype(np.int32)  # (a dtype object: np.frombuffer converts the type np.int32 on every call, ≈ 0.1 µs)
_FIRST_INT32 = struct.Struct("<i").unpack_from  # the first int32 of raw contents (little-endian, as Triton's)
_ONE_TOKEN: list | None = None  # [output_ids, sequence_length] metadata of a one-token streamed response


def _one_token_outputs() -> list:
    """The output metadata of a streamed response with one new token: ``output_ids`` INT32 ``[1, 1, 1]`` and
    ``sequence_length`` INT32 ``[1, 1]`` (no parameters) — what TensorRT-LLM and the CPU stand-in send per token."""
    global _ONE_TOKEN  # noqa: PLW0603
    if _ONE_TOKEN is None:
        from tritonclient.grpc import service_pb2  # noqa: PLC0415

        tensor = service_pb2.ModelInferResponse.InferOutputTensor
        _ONE_TOKEN = [tensor(name="output_ids", datatype="INT32", shape=[1, 1, 1]),
                      tensor(name="sequence_length", datatype="INT32", shape=[1, 1])]
    return _ONE_TOKEN


def _streamed_ids(outputs, raw) -> np.ndarray | None:
    """The common streamed response — exactly ``output_ids`` and ``sequence_length``, both INT32 — decoded without
    the general path's arrays and reshapes (the same ids as :func:`tokens_of`); None for anything else."""
    if len(outputs) != 2 or len(raw) != 2:
        return None
    if outputs == (_ONE_TOKEN or _one_token_outputs()):  # one comparison in C instead of seven field reads
        ids_at, seq_at, width = 0, 1, 1
    else:
        first, second = outputs
        if first.name == "output_ids":
            ids_at, seq_at, ids_out, seq_out = 0, 1, first, second
        else:
            ids_at, seq_at, ids_out, seq_out = 1, 0, second, first
        if ids_out.name != "output_ids" or seq_out.name != "sequence_length" or ids_out.datatype != "INT32" \
                or seq_out.datatype != "INT32" or not ids_out.shape:
            return None
        width = ids_out.shape[-1]
    seq = raw[seq_at]
    if len(seq) < 4:
        return None
    ids = np.frombuffer(raw[ids_at], _INT32)
    size = ids.size
    if size < width:
        return None
    n = _FIRST_INT32(seq)[0]  # the first item's (beam 0's) length
    if 0 <= n < width:
        return ids[:n]
    return ids if size == width else ids[:width]  # beam 0 of item 0, cut at its length


def chunk_of(get, final: bool) -> EngineChunk:
    """An :class:`EngineChunk` from an output getter (``name -> array or None``)."""
    lps, cum = get("output_log_probs"), get("cum_log_probs")
    return EngineChunk(
        ids=tokens_of(get("output_ids"), get("sequence_length")),
        log_probs=None if lps is None else np.asarray(lps, np.float32).ravel(),
        cum_log_prob=None if cum is None else np.asarray(cum, np.float32).ravel(),
        final=final,
    )


_EMPTY_IDS = np.zeros((0,), dtype=np.int32)


def route_response(message, routes: dict[str, EngineHandler]) -> None:
    """Hand one ``ModelStreamInferResponse`` to the handler of its request id (and forget the id on its last one)."""
    response = message.infer_response
    request_id = response.id
    handler = routes.get(request_id)
    if handler is None:
        return  # a request already answered (e.g. its client went away): drop the rest
    error = message.error_message
    if error:
        del routes[request_id]
        call_handler(handler.on_error, error, REQUEST_ERROR_CODE)
        return
    final_param = response.parameters.get("triton_final_response")
    final = final_param is not None and final_param.bool_param
    if final:
        del routes[request_id]
    outputs = response.outputs
    if outputs:
        chunk = _chunk_of_response(response, outputs, final)
    elif final:
        chunk = EngineChunk(_EMPTY_IDS, final=True)
    else:
        return
    try:  # (call_handler's work inline: this runs once per engine response)
        handler.on_chunk(chunk)
    except Exception:  # noqa: BLE001 - one request's handler must not stop the reader
        log.exception(HANDLER_FAILED)


HANDLER_FAILED = "tensorrt_llm_bls: handling an engine response failed"


def call_handler(fn, *args) -> None:
    """Call a handler; log (never raise) what it raises: one request's handler must not stop a reader."""
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - one request's handler must not stop the reader
        log.exception(HANDLER_FAILED)
