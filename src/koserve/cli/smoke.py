"""`koserve gpu-smoke`: the acceptance run for a new GPU box (see koserve.smoke.run)."""

from __future__ import annotations

from pathlib import Path


def _run(args) -> int:
    from koserve.smoke.run import SmokeOptions, run_smoke

    opts = SmokeOptions(
        workdir=Path(args.workdir).expanduser().resolve(),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        gpu=args.gpu,
        examples_dir=args.trtllm_examples,
        python=args.python,
        ready_timeout=args.ready_timeout,
        loadtest_seconds=args.loadtest_seconds,
        echo=lambda line: print(line, flush=True),
    )
    report = run_smoke(opts)
    print("\n" + report.table(), flush=True)
    return 0 if report.ok else 1


def register(subparsers) -> None:
    from koserve.engines.versions import CONTAINER_EXAMPLES_DIR, TRITON_TRTLLM_IMAGE

    p = subparsers.add_parser(
        "gpu-smoke",
        help="acceptance run on a GPU box: build a tiny BF16 engine, serve it, check Korean streaming, load test",
        description=f"Run inside {TRITON_TRTLLM_IMAGE} with one GPU. Builds a BF16 engine from the tiny "
        "Llama-3-vocabulary checkpoint tiny-llama3-gpu (built on first use; needs the llama3 tokenizer fixture of "
        "`koserve setup fixtures --tokenizers-only`) or --checkpoint, renders and serves it, streams Korean through "
        "ensemble and tensorrt_llm_bls over gRPC and HTTP (streamed == non-streamed, no U+FFFD, min_tokens, seed, "
        "cancellation), runs a load test and prints a pass/fail table. Exit 0 only when every row passes.",
    )
    p.add_argument("--workdir", default="koserve-gpu-smoke", help="build, engine, repository and logs (default ./koserve-gpu-smoke)")
    p.add_argument("--checkpoint", help="HF Llama checkpoint folder with head size 64 or 128 (default tiny-llama3-gpu)")
    p.add_argument("--gpu", help="GPU catalogue key (default: the one nvidia-smi shows)")
    p.add_argument("--trtllm-examples", default=CONTAINER_EXAMPLES_DIR,
                   help=f"TensorRT-LLM examples/ folder (default {CONTAINER_EXAMPLES_DIR}, as in the image)")
    p.add_argument("--python", default="python3", help="interpreter for convert_checkpoint.py")
    p.add_argument("--ready-timeout", type=float, default=900.0, help="seconds to wait for Triton to be ready")
    p.add_argument("--loadtest-seconds", type=float, default=30.0, help="length of the load test (default 30)")
    p.set_defaults(func=_run)
