"""Stream a reply over HTTP (Triton's generate_stream, server-sent events) with koserve's client.

    python client/http_sse.py --url http://127.0.0.1:8000 -p komt-13b "한국의 수도는 어디야?"
"""

import argparse
import sys

from koserve.client import ChatClient, ClientError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prompt", nargs="?", default="한국의 수도는 어디야?")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="Triton HTTP address")
    ap.add_argument("-p", "--profile", default="komt-13b")
    ap.add_argument("--model", default="ensemble", help="ensemble or tensorrt_llm_bls")
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()

    try:
        with ChatClient(args.url, args.profile, protocol="http", model=args.model) as client:
            stream = client.stream([{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens)
            for delta in stream:
                print(delta, end="", flush=True)
            result = stream.result
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print()
    print(f"[{result.finish_reason}; {result.completion_tokens} tokens in {result.total_time:.2f} s]",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
