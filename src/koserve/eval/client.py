"""Greedy requests to one deployment through its serving path (Triton ``ensemble`` or ``tensorrt_llm_bls`` over gRPC
``stream_infer``), with ``return_log_probs``.

The text models return text, not token ids: the answer's ids are the model tokenizer's encoding of the text. Both
deployments are measured the same way, so a divergence in ids is a divergence in what was served.
"""

from __future__ import annotations

import queue
import time
import uuid

import numpy as np

from koserve.eval.metrics import Answer
from koserve.server.triton_calls import grpc_inputs, text_inputs
from koserve.text import TextTokenizer


def greedy_answer(url: str, model: str, prompt: str, *, tokenizer: TextTokenizer, max_tokens: int,
                  timeout: float, client=None) -> Answer:
    """One greedy (``top_k`` 1) non-streamed request; every response's text and log probabilities are kept."""
    import tritonclient.grpc as grpcclient  # noqa: PLC0415

    own = client is None
    if own:
        client = grpcclient.InferenceServerClient(url)
    events: queue.Queue = queue.Queue()
    pieces: list[str] = []
    log_probs: list[float] = []
    got_log_probs = False
    error = None
    inputs = text_inputs(prompt, max_tokens, stream=False, top_k=1, return_log_probs=True)
    try:
        client.start_stream(callback=lambda result, error: events.put((result, error)), stream_timeout=timeout)
        client.async_stream_infer(model, grpc_inputs(inputs), request_id=f"ks-eval-{uuid.uuid4().hex}",
                                  enable_empty_final_response=True)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = f"no final response within {timeout:g} s"
                break
            try:
                result, err = events.get(timeout=remaining)
            except queue.Empty:
                error = f"no final response within {timeout:g} s"
                break
            if err is not None:
                error = str(err)
                break
            response = result.get_response()
            names = {o.name for o in response.outputs}
            if "text_output" in names:
                arr = result.as_numpy("text_output")
                if arr is not None and arr.size:
                    raw = arr.reshape(-1)[0]
                    pieces.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
            if "output_log_probs" in names:
                arr = result.as_numpy("output_log_probs")
                if arr is not None:
                    got_log_probs = True
                    log_probs.extend(float(v) for v in np.asarray(arr, dtype=np.float64).reshape(-1))
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
    finally:
        client.stop_stream(cancel_requests=error is not None)
        if own:
            client.close()
    text = "".join(pieces)
    return Answer(text=text, token_ids=tuple(tokenizer.encode(text, add_special_tokens=False)),
                  log_probs=tuple(log_probs) if got_log_probs and log_probs else None, error=error)
