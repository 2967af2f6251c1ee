"""Call the `ensemble` with plain tritonclient (no koserve): the wire format, for users who want only that.

The prompt must already be in the model's chat format. Input names follow NVIDIA's tensorrtllm_backend ensemble.

    python client/raw_tritonclient.py --url 127.0.0.1:8001 --format llama3 "안녕하세요"
"""

import argparse
import queue
import sys
import uuid

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

PROMPTS = {
    # Llama-3 instruct (AkaLlama): end of turn is <|eot_id|> = 128009
    "llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n", 128009, []),
    # komt (Llama-2): end id 2, stop words
    "komt": ("### instruction: {q}\n\n### Response:", 2, ["<|end|>", "###"]),
}


def tensor(name, array, datatype, batched):
    array = array.reshape(1, -1) if batched else array
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("question", nargs="?", default="안녕하세요")
    ap.add_argument("--url", default="127.0.0.1:8001")
    ap.add_argument("--format", choices=sorted(PROMPTS), default="llama3")
    ap.add_argument("--model", default="ensemble")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    template, end_id, stop_words = PROMPTS[args.format]

    client = grpcclient.InferenceServerClient(args.url)
    try:
        # Models with max_batch_size > 0 take a leading batch dimension.
        batched = client.get_model_config(args.model, as_json=True)["config"].get("max_batch_size", 0) > 0
        inputs = [
            tensor("text_input", np.array([template.format(q=args.question).encode()], dtype=object), "BYTES", batched),
            tensor("max_tokens", np.array([args.max_tokens], dtype=np.int32), "INT32", batched),
            tensor("end_id", np.array([end_id], dtype=np.int32), "INT32", batched),
            tensor("stream", np.array([True]), "BOOL", batched),
        ]
        if stop_words:
            inputs.append(tensor("stop_words", np.array([w.encode() for w in stop_words], dtype=object), "BYTES",
                                 batched))
        responses = queue.Queue()
        # A decoupled model (the ensemble streams) is only reachable through the bidirectional stream.
        client.start_stream(callback=lambda result, error: responses.put((result, error)))
        client.async_stream_infer(args.model, inputs, request_id=uuid.uuid4().hex, enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                print(f"\nerror: {error}", file=sys.stderr)
                return 1
            out = result.as_numpy("text_output")
            if out is not None:
                print(b"".join(out.reshape(-1)).decode("utf-8", "replace"), end="", flush=True)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        print()
        return 0
    except InferenceServerException as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


if __name__ == "__main__":
    sys.exit(main())
