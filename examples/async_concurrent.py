"""Send 32 chat requests at once with the asyncio client and report latency and throughput.

    python client/async_concurrent.py --url 127.0.0.1:8001 -p akallama-70b -n 32
"""

import argparse
import asyncio
import statistics
import sys
import time

from koserve.client import AsyncChatClient, ClientError

QUESTIONS = ["서울의 날씨는 어때?", "김치찌개 만드는 법을 알려줘.", "한글은 누가 만들었어?", "좋은 아침이야!"]


async def run(args: argparse.Namespace) -> int:
    async with AsyncChatClient(args.url, args.profile, model=args.model) as client:
        async def one(i: int):
            messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
            return await client.chat(messages, max_tokens=args.max_tokens)

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(args.n)), return_exceptions=True)
        elapsed = time.perf_counter() - started
    failures = [r for r in results if isinstance(r, BaseException)]
    ok = [r for r in results if not isinstance(r, BaseException)]
    for exc in failures[:3]:
        print(f"error: {exc}", file=sys.stderr)
    if not ok:
        return 1
    tokens = sum(r.completion_tokens or 0 for r in ok)
    ttfts = sorted(r.ttft for r in ok if r.ttft is not None)
    print(f"{len(ok)}/{args.n} requests ok in {elapsed:.2f} s; {tokens} tokens ({tokens / elapsed:.1f} tok/s); "
          f"TTFT median {statistics.median(ttfts) * 1000:.0f} ms, max {ttfts[-1] * 1000:.0f} ms")
    print(f"first reply: {ok[0].text[:80]!r}")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="127.0.0.1:8001", help="Triton address (host:port gRPC or http://...)")
    ap.add_argument("-p", "--profile", default="akallama-70b")
    ap.add_argument("--model", default="ensemble")
    ap.add_argument("-n", type=int, default=32, help="number of concurrent requests (default 32)")
    ap.add_argument("--max-tokens", type=int, default=64)
    try:
        return asyncio.run(run(ap.parse_args()))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
