#!/usr/bin/env python3
"""koserve's own CPU per streamed token in the ``postprocessing`` and ``tensorrt_llm_bls`` stubs, outside Triton.

The same code the stubs run — ``PostprocessingModel.execute`` and, for the BLS, ``BlsModel.admit`` plus the engine
reader's per-read work (:meth:`koserve.triton_models.engine_h2._Connection.receive`: HTTP/2 frames → gRPC messages →
``route_response`` → text → :class:`~koserve.triton_models.outbox.StreamOutbox` → response) — with a *null* stand-in for
``triton_python_backend_utils`` (its ``Tensor``, ``InferenceResponse`` and ``send`` cost next to nothing). So the
figure is koserve's own share (our Python, numpy, tokenizers, h2, protobuf); a stub's total (``bench_serving.py
--cpu-per-token``) minus it is the python backend's share (pb_utils, the stub's C++ and its round trips to
tritonserver).

Engine responses carry one token each, as the CPU stand-in and TensorRT-LLM send them when streaming; the streams'
responses arrive interleaved (``--per-read`` engine responses per socket read in the BLS, ``--batch`` requests per
``execute`` call in postprocessing — 4.2 on average was measured at 64 streams, Triton's metrics). The BLS sends
every engine response as one response (null sends are cheap, so its outbox never merges): the costliest case.

Usage: python scripts/bench_stub_cpu.py [--streams 64 256] [--tokens 400] [--family llama3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

PROMPT = "네 이름은 뭐야?"
FINAL_FLAG = 1


# -- a null triton_python_backend_utils ----------------------------------------------------------------------------
class _Tensor:
    __slots__ = ("_name", "_arr")

    def __init__(self, name, arr):
        self._name, self._arr = name, arr

    def name(self):
        return self._name

    def as_numpy(self):
        return self._arr


class _Response:
    __slots__ = ("tensors", "error")

    def __init__(self, output_tensors=(), error=None):
        self.tensors, self.error = output_tensors, error


class _Sender:
    __slots__ = ("sent", "final")
    wait_s = 0.0  # how long a send blocks (sleeping: no CPU), as the python backend's round trip to the server does

    def __init__(self):
        self.sent, self.final = 0, False

    def send(self, response=None, flags=0):
        if self.wait_s:
            time.sleep(self.wait_s)
        self.sent += 1
        self.final = self.final or bool(flags & FINAL_FLAG)

    def is_cancelled(self):
        return False


class _Request:
    __slots__ = ("_id", "_inputs", "sender")

    def __init__(self, request_id, inputs):
        self._id = request_id
        self._inputs = [_Tensor(k, v) for k, v in inputs.items()]
        self.sender = _Sender()

    def request_id(self):
        return self._id

    def inputs(self):
        return self._inputs

    def get_response_sender(self):
        return self.sender

    def is_cancelled(self):
        return False


class NullPb:
    """What koserve's models use of ``triton_python_backend_utils``, at (almost) no cost."""

    Tensor = _Tensor
    InferenceResponse = _Response
    TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL_FLAG

    class TritonError(Exception):
        INVALID_ARG, INTERNAL, UNAVAILABLE = 3, 13, 14

        def __init__(self, message, code=None):
            super().__init__(message)

    @staticmethod
    def get_input_tensor_by_name(request, name):
        for tensor in request.inputs():
            if tensor.name() == name:
                return tensor
        return None


def model_config(family: str, profile: str) -> dict:
    """The ``model_config`` a rendered repository gives koserve's python models (the parameters they read)."""
    from koserve.fixtures import tokenizer_dir  # noqa: PLC0415

    params = {"profile": profile, "tokenizer_dir": str(tokenizer_dir(family)), "max_batch_size": "64",
              "max_input_len": "4096", "max_seq_len": "8192", "engine_grpc_url": "127.0.0.1:9",
              "cancel_poll_s": "0", "max_streams": "8192"}
    return {"parameters": {k: {"string_value": v} for k, v in params.items()}}


def replay_ids(family: str, tokens: int) -> list[int]:
    """The ids the replay engine streams in bench_serving (its built-in passage, repeated)."""
    from koserve.fixtures import tokenizer_dir  # noqa: PLC0415
    from koserve.cpu_engine.replay import long_replay_text  # noqa: PLC0415
    from koserve.text import load_tokenizer  # noqa: PLC0415

    tok = load_tokenizer(tokenizer_dir(family))
    ids = tok.encode(long_replay_text(tokens), add_special_tokens=False)
    return ids[:tokens]


@dataclass
class StubFigure:
    path: str
    streams: int
    us_per_token: float  # median over rounds, process CPU (all threads)
    best_us_per_token: float
    rounds: int
    tokens_per_response: float = 1.0  # BLS: generated tokens per response it sent (postprocessing: always 1)


def _cpu_rounds(fn, rounds: int, tokens: int) -> list[float]:
    out = []
    for _ in range(rounds):
        gc.collect()
        prepared = fn()  # untimed set-up: returns the timed work
        t0 = time.process_time()
        prepared()
        out.append((time.process_time() - t0) / tokens * 1e6)
    return out


# -- postprocessing ------------------------------------------------------------------------------------------------
def postprocessing_rounds(family: str, profile: str, streams: int, tokens: int, batch: int, rounds: int) -> list[float]:
    from koserve.triton_models.models import PostprocessingModel  # noqa: PLC0415

    ids = replay_ids(family, tokens)
    model = PostprocessingModel()
    model.pb = NullPb
    model.initialize({"model_config": json.dumps(model_config(family, profile))})

    def setup():
        # interleaved like a round of the engine: token t of every stream, then token t + 1 ...
        reqs = [_Request(f"s{s}-{time.monotonic_ns()}", {
            "TOKENS_BATCH": np.array([[[t]]], dtype=np.int32), "SEQUENCE_LENGTH": np.ones((1, 1), dtype=np.int32),
        }) for t in ids for s in range(streams)]
        # every stream's id the same within a round: rewrite ids per stream
        names = [f"r{time.monotonic_ns()}-{s}" for s in range(streams)]
        for i, req in enumerate(reqs):
            req._id = names[i % streams]
        calls = [reqs[i:i + batch] for i in range(0, len(reqs), batch)]

        def work():
            for call in calls:
                model.execute(call)
        return work

    try:
        return _cpu_rounds(setup, rounds, streams * tokens)
    finally:
        model.finalize()


# -- BLS -----------------------------------------------------------------------------------------------------------
def _engine_messages(request_ids: list[str], ids: list[int]) -> list[bytes]:
    """Serialized ``ModelStreamInferResponse`` messages as Triton sends them for the streams, interleaved."""
    from tritonclient.grpc import service_pb2  # noqa: PLC0415

    out = []
    one = np.ones((1, 1), dtype=np.int32).tobytes()
    for t, token in enumerate(ids):
        last = t == len(ids) - 1
        for rid in request_ids:
            msg = service_pb2.ModelStreamInferResponse()
            r = msg.infer_response
            r.model_name, r.model_version, r.id = "tensorrt_llm", "1", rid
            o = r.outputs.add()
            o.name, o.datatype = "output_ids", "INT32"
            o.shape.extend([1, 1, 1])
            o = r.outputs.add()
            o.name, o.datatype = "sequence_length", "INT32"
            o.shape.extend([1, 1])
            r.raw_output_contents.extend([np.array([token], dtype=np.int32).tobytes(), one])
            r.parameters["triton_final_response"].bool_param = last
            out.append(msg.SerializeToString())
    return out


def bls_rounds(family: str, profile: str, streams: int, tokens: int, per_read: int, rounds: int,
               sent: list[int] | None = None) -> list[float]:
    import h2.config  # noqa: PLC0415
    import h2.connection  # noqa: PLC0415

    from koserve.triton_models import engine_h2  # noqa: PLC0415
    from koserve.triton_models.bls import BlsModel  # noqa: PLC0415
    from koserve.server.triton_calls import text_inputs  # noqa: PLC0415

    ids = replay_ids(family, tokens)
    model = BlsModel(NullPb, model_config(family, profile))
    inputs = text_inputs(PROMPT, tokens)

    def setup():
        ours, theirs = socket.socketpair()
        conn = engine_h2._Connection("127.0.0.1", 9, sock=ours)
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        conn.pump()
        theirs.setblocking(False)
        server.receive_data(theirs.recv(1 << 20))
        server.send_headers(conn.call_id, [(":status", "200"), ("content-type", "application/grpc")])
        model.engine._conn = conn  # the engine client's live connection: no reader thread, no real socket
        names = [f"b{time.monotonic_ns()}-{s}" for s in range(streams)]
        reads = []
        for i, payload in enumerate(_engine_messages(names, ids)):
            server.send_data(conn.call_id, len(payload).to_bytes(5, "big") + payload)
            if (i + 1) % per_read == 0:
                reads.append(server.data_to_send())
        reads.append(server.data_to_send())
        requests = [_Request(name, inputs) for name in names]

        def work():
            for req in requests:
                model.admit(req)
            conn.take_outgoing()
            conn.pump()
            for data in reads:
                if data:
                    conn.receive(data, model.outbox.on_reader)
                    conn.pump()
                    model.outbox.on_reader(True)  # what the reader does before it waits for the socket again
                    try:
                        while theirs.recv(1 << 20):
                            pass
                    except BlockingIOError:
                        pass
            model.outbox.close()
            missing = [r.request_id() for r in requests if not r.sender.final]
            if sent is not None:
                sent.append(sum(r.sender.sent for r in requests))
            if missing:
                raise SystemExit(f"BLS bench: {len(missing)} streams did not end")
            ours.close()
            theirs.close()
        return work

    try:
        return _cpu_rounds(setup, rounds, streams * tokens)
    finally:
        model.finalize()


def figures(paths=("postprocessing", "tensorrt_llm_bls"), streams=(64,), tokens=400, family="llama3",
            profile="akallama-70b", batch=4, per_read=64, rounds=5, send_wait_us=0.0) -> list[StubFigure]:
    """Median and best µs of koserve's own CPU per token, per path and number of streams. ``send_wait_us``: how
    long each BLS send blocks (without CPU); > 0 lets the outbox merge tokens into responses as in a server."""
    out = []
    _Sender.wait_s = send_wait_us / 1e6
    try:
        for n in streams:
            for path in paths:
                sent: list[int] = []
                if path == "postprocessing":
                    rs = postprocessing_rounds(family, profile, n, tokens, batch, rounds)
                else:
                    rs = bls_rounds(family, profile, n, tokens, per_read, rounds, sent)
                per_response = n * tokens * len(sent) / sum(sent) if sent else 1.0
                out.append(StubFigure(path, n, statistics.median(rs), min(rs), len(rs), per_response))
    finally:
        _Sender.wait_s = 0.0
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--tokens", type=int, default=400, help="tokens per stream")
    ap.add_argument("--family", choices=["llama3", "llama2"], default="llama3")
    ap.add_argument("--profile", default=None, help="default: akallama-70b for llama3, komt-13b for llama2")
    ap.add_argument("--batch", type=int, default=4, help="postprocessing requests per execute call")
    ap.add_argument("--per-read", type=int, default=64, help="BLS: engine responses per socket read")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--paths", nargs="+", default=["postprocessing", "tensorrt_llm_bls"])
    ap.add_argument("--send-wait-us", type=float, default=0.0,
                    help="BLS: each send blocks this long without CPU, like the python backend's round trip to the "
                    "server (0: sends are free, so every engine response becomes a response: the costliest case)")
    ap.add_argument("--json", help="also write the figures here (a list of objects)")
    args = ap.parse_args(argv)
    profile = args.profile or ("akallama-70b" if args.family == "llama3" else "komt-13b")
    print(f"koserve's own CPU per streamed token outside Triton (null pb_utils), {args.family}, {args.tokens} tokens "
          f"per stream, postprocessing batch {args.batch}, BLS {args.per_read} engine responses per read, "
          f"{args.rounds} rounds; pid {os.getpid()}")
    print("| path | streams | µs per token, median (best) | implied tokens/s per core | tokens per response |")
    print("|---|---:|---:|---:|---:|")
    results = []
    for f in figures(args.paths, args.streams, args.tokens, args.family, profile, args.batch, args.per_read,
                     args.rounds, args.send_wait_us):
        results.append(f)
        print(f"| {f.path} | {f.streams} | {f.us_per_token:.1f} ({f.best_us_per_token:.1f}) | "
              f"{1e6 / f.us_per_token:,.0f} | {f.tokens_per_response:.2f} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([asdict(f) for f in results], fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
