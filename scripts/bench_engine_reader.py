#!/usr/bin/env python3
"""Client CPU per engine response of the ways the BLS could read ``tensorrt_llm``'s gRPC stream (issue 19).

Against one real tritonserver (CPU stand-in, replay at zero delay): N streamed engine requests on one
``ModelStreamInfer`` call, every response decoded into an :class:`koserve.triton_models.engine_types.EngineChunk` (the
work the BLS needs from it), read by

- ``h2``: koserve's reader (``koserve.triton_models.engine_h2.H2EngineClient``, what the BLS uses);
- ``grpc-aio``: grpcio's asyncio API (``grpc.aio``), one bidirectional call;
- ``grpc``: grpcio's threaded API, one bidirectional call with a request iterator.

Prints this process's CPU (all threads; the server is another process) per engine response and per token, median
of the rounds (the stand-in puts several tokens into one response when its reader falls behind).

Usage: python scripts/bench_engine_reader.py [--streams 64] [--tokens 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

READERS = ("h2", "grpc-aio", "grpc")


def engine_tensors(tokens: int) -> dict[str, np.ndarray]:
    return {"input_ids": np.array([[128000, 9906, 1917]], dtype=np.int32),
            "input_lengths": np.array([[3]], dtype=np.int32),
            "request_output_len": np.array([[tokens]], dtype=np.int32),
            "streaming": np.array([[True]], dtype=np.bool_)}


class _Tally:
    """Responses and tokens read so far, and how many streams are still open."""

    def __init__(self, streams: int):
        from koserve.triton_models.engine_wire import chunk_from_proto

        self.responses, self.ids, self.open, self._decode = 0, 0, streams, chunk_from_proto

    def take(self, message) -> bool:
        """Decode one ``ModelStreamInferResponse`` as the BLS would; True once every stream has ended."""
        if message.error_message:
            raise SystemExit(f"engine error: {message.error_message}")
        response = message.infer_response
        final = response.parameters["triton_final_response"].bool_param
        self.ids += len(self._decode(response, final).ids)
        self.responses += 1
        self.open -= final
        return not self.open


def read_h2(url: str, streams: int, tokens: int, timeout: float) -> tuple[int, int]:
    from koserve.triton_models.engine_types import EngineChunk
    from koserve.triton_models.engine_h2 import H2EngineClient

    done = threading.Semaphore(0)
    counts = [0, 0]

    class Handler:
        def on_chunk(self, chunk: EngineChunk) -> None:
            counts[0] += 1
            counts[1] += len(chunk.ids)
            if chunk.final:
                done.release()

        def on_error(self, message: str, code: str) -> None:
            raise SystemExit(f"engine error: {message}")

    client = H2EngineClient(url, "tensorrt_llm")
    try:
        for _ in range(streams):
            client.submit(uuid.uuid4().hex, engine_tensors(tokens), ["output_ids", "sequence_length"], Handler())
        for _ in range(streams):
            if not done.acquire(timeout=timeout):
                raise SystemExit("h2: timed out")
    finally:
        client.close()
    return counts[0], counts[1]


def _requests(streams: int, tokens: int) -> list:
    from koserve.triton_models.engine_wire import request_proto

    return [request_proto("tensorrt_llm", engine_tensors(tokens), ["output_ids", "sequence_length"],
                          uuid.uuid4().hex) for _ in range(streams)]


def read_grpc_aio(url: str, streams: int, tokens: int, timeout: float) -> tuple[int, int]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    async def run() -> tuple[int, int]:
        tally = _Tally(streams)
        async with grpc.aio.insecure_channel(url) as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
            for req in _requests(streams, tokens):
                await call.write(req)
            async for message in call:
                if tally.take(message):
                    await call.done_writing()
                    break
        return tally.responses, tally.ids

    return asyncio.run(asyncio.wait_for(run(), timeout))


def read_grpc(url: str, streams: int, tokens: int, timeout: float) -> tuple[int, int]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    outgoing: queue.Queue = queue.Queue()
    for req in _requests(streams, tokens):
        outgoing.put(req)
    end = object()

    def requests():
        while (item := outgoing.get()) is not end:
            yield item

    tally, deadline = _Tally(streams), time.monotonic() + timeout
    with grpc.insecure_channel(url) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=timeout)
        for message in call:
            if tally.take(message) or time.monotonic() > deadline:
                outgoing.put(end)
                break
    return tally.responses, tally.ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS))
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args(argv)
    import grpc

    from koserve.testing.stack import serve_cpu

    run = {"h2": read_h2, "grpc-aio": read_grpc_aio, "grpc": read_grpc}
    cpu: dict[str, list[tuple[float, float, float]]] = {r: [] for r in args.readers}
    from koserve.cpu_engine.replay import long_replay_text

    text_file = Path(tempfile.mkdtemp(prefix="koserve-reader-")) / "replay.txt"  # long enough for --tokens
    text_file.write_text(long_replay_text(args.tokens), encoding="utf-8")
    with serve_cpu("akallama-70b", "replay", replay_delay_ms=0.0, max_batch_size=max(64, args.streams),
                   replay_text_file=text_file) as ep:
        print(f"server up: {ep.grpc_url}; {args.streams} streams x {args.tokens} tokens, {args.rounds} rounds, "
              f"grpcio {grpc.__version__}", flush=True)
        for reader in args.readers:  # warm-up: imports, first connection
            run[reader](ep.grpc_url, 2, 4, args.timeout)
        for round_no in range(args.rounds):
            for reader in args.readers[round_no % len(args.readers):] + args.readers[:round_no % len(args.readers)]:
                t0 = time.process_time()
                responses, ids = run[reader](ep.grpc_url, args.streams, args.tokens, args.timeout)
                used = time.process_time() - t0
                if ids != args.streams * args.tokens:
                    raise SystemExit(f"{reader}: {ids} tokens, expected {args.streams * args.tokens}")
                cpu[reader].append((used / responses * 1e6, used / ids * 1e6, ids / responses))
                print(f"  round {round_no + 1} {reader:9s} {cpu[reader][-1][0]:6.1f} us per engine response, "
                      f"{cpu[reader][-1][1]:6.1f} per token ({ids / responses:.2f} tokens per response)", flush=True)
    print("| reader | client CPU µs per engine response, median (min–max) | µs per token | tokens per response |")
    print("|---|---:|---:|---:|")
    for reader, values in cpu.items():
        per_response = [v[0] for v in values]
        print(f"| {reader} | {statistics.median(per_response):.1f} ({min(per_response):.1f}–{max(per_response):.1f}) "
              f"| {statistics.median(v[1] for v in values):.1f} | {statistics.median(v[2] for v in values):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
