"""Stream a Korean chat reply over gRPC with koserve's client.

    python client/grpc_streaming.py --url 127.0.0.1:8001 -p akallama-70b "네 이름은 뭐야?"
"""

import argparse
import sys

from koserve.client import ChatClient, ClientError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt", nargs="?", default="네 이름은 뭐야?")
    ap.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address")
    ap.add_argument("-p", "--profile", default="akallama-70b")
    ap.add_argument("--model", default="ensemble", help="ensemble or tensorrt_llm_bls")
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()

    messages = [{"role": "user", "content": args.prompt}]
    try:
        with ChatClient(args.url, args.profile, model=args.model) as client:
            with client.stream(messages, max_tokens=args.max_tokens) as stream:
                for delta in stream:  # text as it is generated; stop words are already cut off
                    print(delta, end="", flush=True)
            result = stream.result
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(f"[{result.finish_reason}; {result.completion_tokens} tokens; "
          f"first token after {result.ttft * 1000:.0f} ms]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
