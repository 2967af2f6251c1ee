"""`koserve demo`: render CPU repositories for both profiles, start Triton, stream a Korean answer from each."""

from __future__ import annotations

import contextlib
import sys
import time
import uuid

DEMO_QUESTIONS = {
    # The AkaLlama model card's example question, with its chat template and default system prompt.
    "akallama-70b": "네 이름은 뭐야?",
    # A komt-style instruction.
    "komt-13b": "한국의 전통 음식인 김치에 대해 세 문장으로 설명해 주세요.",
}


def _stream_one(endpoints, model: str, question: str, max_tokens: int, out) -> None:
    from koserve.chat import render_prompt
    from koserve.profiles import load_profile
    from koserve.server.triton_calls import grpc_stream, text_inputs
    from koserve.text import load_tokenizer

    profile = load_profile(endpoints.profile)
    prompt = render_prompt(profile, [{"role": "user", "content": question}])
    gen = profile.generation
    inputs = text_inputs(
        prompt, max_tokens, stream=True, temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k,
        random_seed=0,
    )
    printed = []

    def echo(piece: str) -> None:
        printed.append(piece)
        out.write(piece)
        out.flush()

    t0 = time.perf_counter()
    result = grpc_stream(endpoints.grpc_url, model, inputs, request_id=uuid.uuid4().hex, timeout=300,
                         on_piece=echo)
    elapsed = time.perf_counter() - t0
    if not printed:
        out.write(result.text)
    out.write("\n")
    if result.error:
        out.write(f"  error: {result.error}\n")
        return
    tokens = len(load_tokenizer(endpoints.tokenizer_dir).encode(result.text, add_special_tokens=False))
    ttft = result.ttft if result.ttft is not None else float("nan")
    rate = tokens / (elapsed - ttft) if tokens > 1 and elapsed > ttft else float("nan")
    out.write(f"  [{model}] TTFT {ttft * 1000:.0f} ms · {tokens} tokens in {elapsed:.2f} s · {rate:.1f} tokens/s\n")


def _demo(args) -> int:
    from koserve.testing.stack import serve_cpu

    out = sys.stdout
    profiles = args.profile or list(DEMO_QUESTIONS)
    if args.mode == "hf":
        out.write(
            "NOTE: on CPU the TensorRT-LLM engine is replaced by a stand-in running TINY RANDOM-WEIGHT Llama "
            "checkpoints\n(real Llama-3 / Llama-2 tokenizers): the answers below are meaningless token salad. The "
            "serving path is the real one.\nRender a real HF checkpoint with `koserve repo render --cpu-model DIR` "
            "for real text.\n\n"
        )
    with contextlib.ExitStack() as stack:
        servers = {}
        for profile in profiles:
            out.write(f"starting Triton for {profile} ({args.mode}) ...\n")
            out.flush()
            servers[profile] = stack.enter_context(serve_cpu(profile, args.mode, ready_timeout=args.ready_timeout))
            ep = servers[profile]
            out.write(f"  ready: gRPC {ep.grpc_url} · HTTP {ep.http_url} · metrics {ep.metrics_url}\n")
        for profile, ep in servers.items():
            question = DEMO_QUESTIONS.get(profile, "안녕하세요?")
            out.write(f"\n=== {profile} · user: {question}\n")
            for model in args.models:
                out.write(f"--- via {model}:\n")
                _stream_one(ep, model, question, args.max_tokens, out)
        if args.keep:
            out.write("\n--keep: Triton keeps serving (Ctrl-C to stop):\n")
            for profile, ep in servers.items():
                out.write(f"  {profile}: gRPC {ep.grpc_url}  HTTP {ep.http_url}  repo {ep.repo}\n")
            out.flush()
            try:
                while all(ep.server.is_alive() for ep in servers.values()):
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
        out.write("\nstopping Triton ...\n")
    out.write("done.\n")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="serve both profiles on CPU and stream a Korean answer from each",
        description="Renders CPU model repositories for akallama-70b and komt-13b, starts a real Triton server for "
        "each, asks the AkaLlama card's question (chat template + system prompt) and a komt instruction, streams "
        "the answers with TTFT and tokens/s, then stops (unless --keep).",
    )
    p.add_argument("--profile", action="append", help="only this profile (repeatable)")
    p.add_argument("--mode", choices=["hf", "replay"], default="hf",
                   help="hf: tiny random-weight checkpoints (default); replay: a fixed Korean text")
    p.add_argument("--models", nargs="+", default=["ensemble", "tensorrt_llm_bls"],
                   choices=["ensemble", "tensorrt_llm_bls"])
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--ready-timeout", type=float, default=300.0)
    p.add_argument("--keep", action="store_true", help="leave the servers running until Ctrl-C")
    p.set_defaults(func=_demo)
