"""`koserve demo`: render CPU repositories for both profiles, start Triton, stream a Korean answer from each."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

from koserve.cli.conventions import TARGETS

DEMO_QUESTIONS = {
    # The AkaLlama model card's example question, with its chat template and default system prompt.
    "akallama-70b": "네 이름은 뭐야?",
    # A komt-style instruction.
    "komt-13b": "한국의 전통 음식인 김치에 대해 세 문장으로 설명해 주세요.",
}
DEMO_SEED = 0
MODE_TEXT = {
    "hf": "hf = the CPU stand-in engine running a tiny random-weight Hugging Face Llama checkpoint",
    "replay": "replay = the CPU stand-in engine replaying a fixed Korean text",
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
        random_seed=DEMO_SEED,
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
    rate = (tokens - 1) / (elapsed - ttft) if tokens > 1 and elapsed > ttft else float("nan")
    out.write(f"  [{model}] TTFT {ttft * 1000:.0f} ms · {tokens} tokens in {elapsed:.2f} s · "
              f"decode {rate:.1f} tokens/s after the first token\n")


def _check_profiles(names: list[str]) -> None:
    """Refuse a profile the demo cannot serve before anything starts."""
    from koserve.errors import ConfigError  # noqa: PLC0415
    from koserve.profiles.loader import builtin_profile_names  # noqa: PLC0415

    known = builtin_profile_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"the demo serves built-in profiles only; unknown: {', '.join(unknown)} "
                          f"(known: {', '.join(known)}; see `koserve profiles`)")


def koserve_command() -> str:
    """How to call this koserve from a shell: ``koserve`` when that is on PATH, else its full path."""
    here = Path(sys.executable).with_name("koserve")
    on_path = shutil.which("koserve")
    if here.is_file():
        if on_path and Path(on_path).resolve() == here.resolve():
            return "koserve"
        return shlex.quote(str(here))
    return f"{shlex.quote(sys.executable)} -m koserve"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def next_steps(servers: dict, koserve: str, gateway_port: int) -> list[str]:
    """Copy-paste commands against the kept servers: chat, curl to Triton, the gateway and a load test."""
    from koserve.chat import render_prompt  # noqa: PLC0415

    lines = ["next steps: paste these into another shell (this one keeps the servers; Ctrl-C stops them)."]
    if koserve != "koserve":
        lines.append(f"  (koserve is not on PATH here: activate its venv with `source {Path(sys.executable).parent}"
                     "/activate`, or use the full path as below)")
    for profile, ep in servers.items():
        question = DEMO_QUESTIONS.get(profile, "안녕하세요?")
        # Triton's own HTTP API takes the prompt already in the chat format (here without the system prompt)
        prompt = render_prompt(profile, [{"role": "user", "content": question}], system_prompt=None)
        body = json.dumps({"text_input": prompt, "max_tokens": 32, "stream": True}, ensure_ascii=False)
        lines += [
            f"  # {profile}: a question, an interactive chat, Triton's HTTP API (chat template applied by hand)",
            f"  {koserve} chat -p {profile} --url {ep.grpc_url} --max-tokens 64 {shlex.quote(question)}",
            f"  {koserve} chat -p {profile} --url {ep.grpc_url}",
            f"  curl -sN {ep.http_url}/v2/models/ensemble/generate_stream -d {shlex.quote(body)}",
        ]
    first, ep = next(iter(servers.items()))
    gateway_models = " ".join(f"--model {p}={e.grpc_url}" for p, e in servers.items())
    chat_body = json.dumps({"model": first, "max_tokens": 32,
                            "messages": [{"role": "user", "content": DEMO_QUESTIONS.get(first, "안녕하세요?")}]},
                           ensure_ascii=False)
    lines += [
        "  # load test (30 s, 4 streams; report in reports/)",
        f"  {koserve} loadtest --url {ep.grpc_url} -p {first} --metrics-url {ep.metrics_url} --duration 30s "
        "--concurrency 4",
        "  # the OpenAI-compatible gateway (it stays in the foreground), then, from another shell, a request to it",
        f"  {koserve} gateway {gateway_models} --port {gateway_port}",
        f"  curl -s http://127.0.0.1:{gateway_port}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d {shlex.quote(chat_body)}",
    ]
    return lines


def _demo(args) -> int:
    from koserve.testing.stack import serve_cpu

    out = sys.stdout
    profiles = args.profile or list(DEMO_QUESTIONS)
    _check_profiles(profiles)
    targets = list(dict.fromkeys(args.targets or TARGETS))
    if args.mode == "hf":
        out.write(
            "NOTE: on CPU the TensorRT-LLM engine is replaced by a stand-in running TINY RANDOM-WEIGHT Llama "
            "checkpoints\n(real Llama-3 / Llama-2 tokenizers): the answers below are meaningless token salad. The "
            "serving path is the real one.\nRender a real HF checkpoint with `koserve repo render --cpu-model DIR` "
            "for real text.\n"
        )
    out.write(f"Sampling is seeded (seed {DEMO_SEED}): every run prints the same answers.\n\n")
    with contextlib.ExitStack() as stack:
        servers = {}
        for profile in profiles:
            out.write(f"starting Triton for {profile} ({MODE_TEXT[args.mode]}) ...\n")
            out.flush()
            servers[profile] = stack.enter_context(serve_cpu(profile, args.mode, ready_timeout=args.ready_timeout))
            ep = servers[profile]
            out.write(f"  ready: gRPC {ep.grpc_url} · HTTP {ep.http_url} · metrics {ep.metrics_url}\n")
        for profile, ep in servers.items():
            question = DEMO_QUESTIONS.get(profile, "안녕하세요?")
            out.write(f"\n=== {profile} · user: {question}\n")
            for model in targets:
                out.write(f"--- via {model}:\n")
                _stream_one(ep, model, question, args.max_tokens, out)
        if args.keep:
            out.write("\n--keep: Triton keeps serving:\n")
            for profile, ep in servers.items():
                out.write(f"  {profile}: gRPC {ep.grpc_url}  HTTP {ep.http_url}  metrics {ep.metrics_url}  "
                          f"repo {ep.repo}\n")
            out.write("\n" + "\n".join(next_steps(servers, koserve_command(), _free_port())) + "\n")
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
    from koserve.cli.conventions import add_max_tokens, add_profile, add_target, add_time  # noqa: PLC0415

    p = subparsers.add_parser(
        "demo",
        help="serve both profiles on CPU and stream a Korean answer from each",
        description="Renders CPU model repositories for akallama-70b and komt-13b, starts a real Triton server for "
        "each, asks the AkaLlama card's question (chat template + system prompt) and a komt instruction, streams "
        "the answers (seeded) with TTFT and the decode rate after the first token, then stops (unless --keep, "
        "which prints copy-paste commands for chat, curl, the gateway and a load test against the kept servers).",
    )
    add_profile(p, repeatable=True)
    p.add_argument("--mode", choices=["hf", "replay"], default="hf",
                   help="hf: the CPU stand-in runs tiny random-weight HF checkpoints; replay: it replays a fixed "
                   "Korean text")
    add_target(p, repeatable=True)
    add_max_tokens(p, default=48, help="most tokens per answer")
    add_time(p, "--ready-timeout", default="5m", help="time each Triton server may take to become ready")
    p.add_argument("--keep", action="store_true",
                   help="leave the servers running until Ctrl-C and print commands to use them")
    p.set_defaults(func=_demo)
