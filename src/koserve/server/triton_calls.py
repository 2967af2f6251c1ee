"""Raw Triton calls (plain ``tritonclient`` / ``httpx``, no koserve client): the health prober's and gpu-smoke's;
the demo, tests and benchmarks reuse them.

Each call has a timeout; gRPC streams always stop their stream. Results keep every text piece as it arrived, so
callers can check what went over the wire (whole UTF-8 characters, order, timing).
"""

from __future__ import annotations

import json
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TEXT_MODELS = ("ensemble", "tensorrt_llm_bls")


@dataclass
class StreamResult:
    """What one request produced."""

    pieces: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # seconds since the request was sent, one per piece
    error: str | None = None
    raw: list[Any] = field(default_factory=list)  # per response: raw bytes (gRPC) or raw SSE data (HTTP)
    tokens: list[int] = field(default_factory=list)  # per piece: generated tokens it covers (num_output_tokens, else 1)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def token_count(self) -> int:
        """Generated tokens all pieces covered."""
        return sum(self.tokens)

    @property
    def ttft(self) -> float | None:
        return self.times[0] if self.times else None

    def add_grpc(self, result, output: str, elapsed: float) -> bool:
        """Keep the piece of one gRPC stream response (tritonclient ``InferResult``) that arrived ``elapsed`` s after
        the request; returns whether it was the final response."""
        response = result.get_response()
        arr = result.as_numpy(output)
        if arr is not None and arr.size:
            raw = arr.reshape(-1)[0]
            self.raw.append(raw)
            self.pieces.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
            self.times.append(elapsed)
            counts = result.as_numpy("num_output_tokens") if any(
                o.name == "num_output_tokens" for o in response.outputs) else None
            self.tokens.append(1 if counts is None else int(counts.reshape(-1)[0]))
        final = response.parameters.get("triton_final_response")
        return final is not None and final.bool_param

    def add_sse(self, line: str, elapsed: float) -> bool:
        """Keep the piece of one HTTP ``generate_stream`` line that arrived ``elapsed`` s after the request (other
        SSE lines are ignored); returns whether it carried an error (kept in ``error``)."""
        if not line.startswith("data:"):
            return False
        data = line[5:].strip()
        self.raw.append(data)
        obj = json.loads(data)  # strict: invalid UTF-8 from the server would fail here
        if "error" in obj:
            self.error = obj["error"]
            return True
        piece = obj.get("text_output")
        if isinstance(piece, list):
            piece = piece[0] if piece else ""
        if piece is not None:
            self.pieces.append(piece)
            self.times.append(elapsed)
            count = obj.get("num_output_tokens", 1)
            self.tokens.append(int(count[0] if isinstance(count, list) else count))
        return False


def text_inputs(
    prompt: str,
    max_tokens: int,
    *,
    stream: bool = True,
    **optional: Any,
) -> dict[str, np.ndarray]:
    """Inputs of ``ensemble`` / ``tensorrt_llm_bls`` with the batch dimension (NVIDIA client layout)."""
    inputs: dict[str, np.ndarray] = {
        "text_input": np.array([[prompt.encode("utf-8") if isinstance(prompt, str) else prompt]], dtype=np.object_),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "stream": np.array([[stream]], dtype=np.bool_),
    }
    kinds = {
        "end_id": np.int32, "pad_id": np.int32, "top_k": np.int32, "min_length": np.int32, "beam_width": np.int32,
        "random_seed": np.uint64, "top_p": np.float32, "temperature": np.float32, "length_penalty": np.float32,
        "repetition_penalty": np.float32, "presence_penalty": np.float32, "frequency_penalty": np.float32,
        "exclude_input_in_output": np.bool_, "return_log_probs": np.bool_,
    }
    for name, value in optional.items():
        if value is None:
            continue
        if name in ("stop_words", "bad_words"):
            inputs[name] = np.array([[w.encode("utf-8") for w in value]], dtype=np.object_)
        elif isinstance(value, np.ndarray):
            inputs[name] = value
        else:
            inputs[name] = np.array([[value]], dtype=kinds[name])
    return inputs


def grpc_inputs(inputs: dict[str, np.ndarray]):
    """tritonclient ``InferInput`` objects for named arrays (object arrays as BYTES)."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415
    from tritonclient.utils import np_to_triton_dtype  # noqa: PLC0415

    out = []
    for name, arr in inputs.items():
        dtype = "BYTES" if arr.dtype == np.object_ else np_to_triton_dtype(arr.dtype)
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def grpc_stream(
    url: str,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    request_id: str = "",
    timeout: float = 60.0,
    output: str = "text_output",
    cancel_after: int | None = None,
    client=None,
    on_piece=None,
) -> StreamResult:
    """One request over gRPC ``stream_infer``; collects ``output`` until the final response (or ``timeout``).

    ``cancel_after``: close the stream (cancelling the request) after that many responses. ``on_piece(text)`` is
    called for each piece as it arrives.
    """
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    own = client is None
    if own:
        client = grpcclient.InferenceServerClient(url)
    events: queue.Queue = queue.Queue()

    def callback(result, error):
        events.put((time.perf_counter(), result, error))

    res = StreamResult()
    t0 = time.perf_counter()
    try:
        client.start_stream(callback=callback, stream_timeout=timeout)
        client.async_stream_infer(
            model, grpc_inputs(inputs), request_id=request_id, enable_empty_final_response=True,
        )
        deadline = t0 + timeout
        count = 0
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                res.error = f"timeout after {timeout} s"
                break
            try:
                at, result, error = events.get(timeout=remaining)
            except queue.Empty:
                res.error = f"timeout after {timeout} s"
                break
            if error is not None:
                res.error = str(error)
                break
            pieces = len(res.pieces)
            final = res.add_grpc(result, output, at - t0)
            if on_piece is not None and len(res.pieces) > pieces:
                on_piece(res.pieces[-1])
            count += 1
            if final:
                break
            if cancel_after is not None and count >= cancel_after:
                break
    finally:
        client.stop_stream(cancel_requests=cancel_after is not None or res.error is not None)
        if own:
            client.close()
    return res


def http_generate_stream(
    url: str, model: str, payload: dict[str, Any], *, timeout: float = 60.0, request_id: str | None = None
) -> StreamResult:
    """One request over HTTP ``generate_stream`` (SSE). ``payload`` uses input names as keys."""
    import httpx  # noqa: PLC0415

    body = dict(payload)
    if request_id:
        body["id"] = request_id
    res = StreamResult()
    t0 = time.perf_counter()
    with httpx.Client(timeout=timeout) as client:
        with client.stream("POST", f"{url}/v2/models/{model}/generate_stream", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                res.error = f"HTTP {resp.status_code}: {resp.text}"
                return res
            for line in resp.iter_lines():
                elapsed = time.perf_counter() - t0
                if elapsed > timeout:
                    res.error = f"timeout after {timeout} s"
                    break
                if res.add_sse(line, elapsed):
                    break
    return res


def http_generate(
    url: str, model: str, payload: dict[str, Any], *, timeout: float = 60.0, request_id: str | None = None
) -> tuple[int, dict]:
    """HTTP ``generate`` (one response); returns (status, JSON body). Triton answers 200 with ``{"error": ...}``
    when a decoupled model sends more than one response."""
    import httpx  # noqa: PLC0415

    body = dict(payload)
    if request_id:
        body["id"] = request_id
    resp = httpx.post(f"{url}/v2/models/{model}/generate", json=body, timeout=timeout)
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text}
    return resp.status_code, body
