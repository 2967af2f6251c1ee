"""`koserve gpu-smoke`: the acceptance run for a new GPU box (see koserve.smoke.run)."""

from __future__ import annotations

from pathlib import Path


def _run(args) -> int:
    from koserve.smoke.run import SmokeOptions, default_workdir, run_smoke

    opts = SmokeOptions(
        workdir=Path(args.workdir).expanduser().resolve() if args.workdir else default_workdir(),
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        gpu=args.gpu,
        examples_dir=args.trtllm_examples,
        python=args.python,
        engine_backend=args.engine_backend,
        ready_timeout=args.ready_timeout,
        loadtest_seconds=args.loadtest_duration,
        echo=lambda line: print(line, flush=True),
    )
    report = run_smoke(opts)
    print("\n" + report.table(), flush=True)
    return 0 if report.ok else 1


def register(subparsers) -> None:
    from koserve.cli.conventions import add_alias, add_time
    from koserve.engines.versions import CONTAINER_EXAMPLES_DIR, TRITON_TRTLLM_IMAGE

    p = subparsers.add_parser(
        "gpu-smoke",
        help="acceptance run on a GPU box: build a tiny BF16 engine, serve it, check Korean streaming, load test",
        description=f"Run inside {TRITON_TRTLLM_IMAGE} with one GPU. Checks for the GPU first, then builds a BF16 engine from the tiny "
        "Llama-3-vocabulary checkpoint tiny-llama3-gpu or --checkpoint, renders and serves it, streams Korean through "
        "ensemble and tensorrt_llm_bls over gRPC and HTTP (streamed == non-streamed, no U+FFFD, min_tokens, seed, "
        "cancellation), runs a bounded concurrent load through the ensemble and prints a pass/fail table. Exit 0 "
        "only when every row passes. "
        "Needs: one GPU (nvidia-smi), TensorRT-LLM 1.2.1's examples (convert_checkpoint.py, trtllm-build) and "
        "koserve[server]; for tiny-llama3-gpu also torch and transformers (the image's own), no network, no npm "
        "(its tokenizer is built in code). "
        "Writes: tiny-llama3-gpu to $KOSERVE_CACHE/models, and the build, engine, repository and logs to "
        "--workdir (default $KOSERVE_CACHE/gpu-smoke; the image sets KOSERVE_CACHE=/var/cache/koserve, owned by "
        "uid 1000).",
    )
    p.add_argument("--workdir",
                   help="folder for the build, engine, repository and logs (default $KOSERVE_CACHE/gpu-smoke)")
    p.add_argument("--checkpoint", help="HF Llama checkpoint folder with head size 64 or 128 (default tiny-llama3-gpu)")
    p.add_argument("--gpu", metavar="KEY",
                   help="GPU catalogue key, see `koserve build gpus` (default: the one nvidia-smi shows)")
    p.add_argument("--trtllm-examples", default=CONTAINER_EXAMPLES_DIR,
                   help=f"TensorRT-LLM examples/ folder (default {CONTAINER_EXAMPLES_DIR}, as in the image)")
    p.add_argument("--python", default="python3", help="interpreter for convert_checkpoint.py")
    p.add_argument("--engine-backend", choices=("trtllm", "pytorch"), default="trtllm",
                   help="trtllm: build a BF16 TensorRT engine and serve it on the C++ backend; pytorch: a BF16 "
                   "checkpoint (no quantization, no engine build) served by the LLM API engine step")
    add_time(p, "--ready-timeout", default="15m", help="time Triton may take to become ready")
    add_time(p, "--loadtest-duration", default="30s", help="length of the load test")
    add_alias(p, "--loadtest-seconds", "--loadtest-duration", dest="loadtest_duration", type=float, metavar="SECONDS")
    p.set_defaults(func=_run)
