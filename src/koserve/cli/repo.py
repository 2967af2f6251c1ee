"""`koserve repo render`: fill the model_repository templates for a profile and an engine (GPU) or a CPU model."""

from __future__ import annotations

from pathlib import Path


def _render(args) -> int:
    from koserve.repo.render import RenderOptions, render_repository

    opts = RenderOptions(
        profile=args.profile,
        tokenizer_dir=Path(args.tokenizer),
        out=Path(args.out),
        engine_dir=Path(args.engine) if args.engine else None,
        engine_backend=args.engine_backend,
        checkpoint_dir=Path(args.checkpoint) if args.checkpoint else None,
        tp_size=args.tp,
        pp_size=args.pp,
        max_num_tokens=args.max_num_tokens,
        cpu_model_dir=Path(args.cpu_model) if args.cpu_model else None,
        replay=args.replay,
        replay_delay_ms=args.replay_delay_ms,
        replay_text_file=Path(args.replay_text) if args.replay_text else None,
        max_batch_size=args.max_batch_size,
        max_input_len=args.max_input_len,
        max_seq_len=args.max_seq_len,
        triton_max_queue_delay_us=args.max_queue_delay_us,
        bls_instances=args.bls_instances,
        preprocessing_instances=args.preprocessing_instances,
        force=args.force,
    ).with_overrides(  # None: the render default
        postprocessing_max_queue_delay_us=args.postprocessing_batch_delay_us,
        bls_stream_send_share=args.bls_stream_send_share,
        bls_stream_max_interval_us=args.bls_stream_max_interval_us,
        bls_stream_max_wait_gaps=args.bls_stream_max_wait_gaps,
        engine_decoupled=False if args.engine_not_decoupled else None,
        bls_decoupled=False if args.bls_not_decoupled else None,
        ensemble_all_outputs=True if args.ensemble_all_outputs else None,
        guided_decoding=True if args.guided_decoding else None,
    )
    rendered = render_repository(opts)
    ctx = rendered.context
    print(
        f"rendered {rendered.kind.upper()} repository ({ctx['engine_backend']} engine step) for "
        f"{rendered.profile_name} at {rendered.path}\n"
        f"  models: {', '.join(rendered.models)}\n"
        f"  max_batch_size={ctx['max_batch_size']} max_input_len={ctx['max_input_len']} "
        f"max_seq_len={ctx['max_seq_len']} tp={ctx['tp_size']} pp={ctx['pp_size']}\n"
        f"  serve it: koserve serve --repo {rendered.path}"
    )
    return 0


def register(subparsers) -> None:
    from koserve.cli.conventions import add_profile
    from koserve.triton_models.stream_defaults import DEFAULT_MAX_INTERVAL_US, DEFAULT_MAX_WAIT_GAPS, DEFAULT_SEND_SHARE

    repo = subparsers.add_parser("repo", help="Triton model repository tools")
    sub = repo.add_subparsers(dest="repo_command")
    p = sub.add_parser(
        "render",
        help="render the model repository for a profile",
        description="Render model_repository/ templates. Give exactly one of --engine (GPU, TensorRT-LLM engine "
        "folder: limits and TP×PP read from its config.json), --checkpoint (GPU, --engine-backend pytorch: a Hugging "
        "Face checkpoint served by the LLM API), --cpu-model (CPU stand-in running a HF Llama "
        "checkpoint) or --replay (CPU stand-in replaying a fixed token sequence).",
    )
    add_profile(p, default=None, required=True)
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="folder with tokenizer.json (+ tokenizer_config.json)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--engine", metavar="DIR", help="TensorRT-LLM engine folder (GPU)")
    mode.add_argument("--checkpoint", metavar="DIR",
                      help="Hugging Face checkpoint folder (GPU, --engine-backend pytorch: the LLM API loads it)")
    mode.add_argument("--cpu-model", metavar="DIR", help="Hugging Face Llama checkpoint folder (CPU stand-in)")
    mode.add_argument("--replay", action="store_true", help="CPU stand-in in replay mode (tests, benchmarks)")
    p.add_argument("--engine-backend", choices=("trtllm", "pytorch"), default="trtllm",
                   help="the engine step, served as tensorrt_llm either way: trtllm (default) TensorRT-LLM's C++ "
                   "backend on an --engine; pytorch the LLM API (PyTorch backend) on a --checkpoint, or on the CPU "
                   "stand-in's LLM API object with --cpu-model / --replay (docs/serving.md)")
    p.add_argument("--tp", type=int, default=1, metavar="N", help="pytorch on GPU: tensor-parallel size (default 1)")
    p.add_argument("--pp", type=int, default=1, metavar="N",
                   help="pytorch on GPU: pipeline-parallel size (default 1)")
    p.add_argument("--max-num-tokens", type=int, default=None, metavar="N",
                   help="pytorch: LLM(max_num_tokens=N), tokens per engine iteration (default 8192)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--engine-not-decoupled", action="store_true",
                   help="render tensorrt_llm (GPU engine or CPU stand-in) with decoupled: false: unary "
                        "ModelInfer / HTTP infer on tensorrt_llm and the ensemble, one response per request; "
                        "streaming=true is refused, and tensorrt_llm_bls is rendered not decoupled too")
    p.add_argument("--bls-not-decoupled", action="store_true",
                   help="render tensorrt_llm_bls with decoupled: false (unary ModelInfer / HTTP infer on it, one "
                        "response per request; stream=true is refused)")
    p.add_argument("--guided-decoding", action="store_true",
                   help="enable structured output (JSON schema, JSON mode, tools): tensorrt_llm's "
                        "guided_decoding_backend xgrammar, with TensorRT-LLM's xgrammar tokenizer-info file written "
                        "from --tokenizer into the repository (docs/client.md, 'Structured output')")
    p.add_argument("--ensemble-all-outputs", action="store_true",
                   help="declare all of NVIDIA's optional ensemble outputs (context/generation logits, perf metrics, "
                        "kv-cache and draft stats, sequence_index; koserve never sends them), for clients that ask "
                        "for them by name; default: batch_index, num_input_tokens, num_output_tokens only (each "
                        "mapped output costs CPU on every streamed response: "
                        "docs/decisions/2026-12-02-ensemble-optional-outputs.md)")
    p.add_argument("--replay-delay-ms", type=float, default=0.0, metavar="MS", help="replay: delay between tokens (ms)")
    p.add_argument("--replay-text", metavar="FILE", help="replay: file whose text (tokenized) is replayed")
    p.add_argument("--max-batch-size", type=int, metavar="N",
                   help="CPU or --checkpoint: engine max batch size (default: 64)")
    p.add_argument("--max-input-len", type=int, metavar="N",
                   help="CPU or --checkpoint: max prompt tokens (default: max-seq-len - 1)")
    p.add_argument("--max-seq-len", type=int, metavar="N",
                   help="CPU or --checkpoint: max prompt + output tokens (default: the model's)")
    p.add_argument("--max-queue-delay-us", type=int, default=0, metavar="US",
                   help="engine dynamic batching queue delay (µs)")
    p.add_argument("--bls-instances", type=int, default=1, metavar="N",
                   help="instances (processes) of tensorrt_llm_bls; each takes requests in parallel")
    p.add_argument("--preprocessing-instances", type=int, default=1, metavar="N",
                   help="instances (processes) of preprocessing (tokenizing); postprocessing stays at one, which "
                   "keeps each stream's tokens in order (docs/serving.md)")
    p.add_argument("--postprocessing-batch-delay-us", type=int, default=None,
                   help="postprocessing dynamic batching queue delay in µs (0: no dynamic batching; default "
                   "1000, measured in docs/serving.md)")
    p.add_argument("--bls-stream-send-share", type=float, default=None,
                   help="BLS: share of time sending responses may take before a stream's tokens share one response "
                   f"(0: one response per engine response; default {DEFAULT_SEND_SHARE}; docs/serving.md)")
    p.add_argument("--bls-stream-max-interval-us", type=int, default=None,
                   help=f"BLS: longest wait between two responses of a stream in µs (default {DEFAULT_MAX_INTERVAL_US})")
    p.add_argument("--bls-stream-max-wait-gaps", type=float, default=None,
                   help="BLS: longest wait between two responses of a stream in multiples of the engine's average "
                   f"gap between two of its responses (default {DEFAULT_MAX_WAIT_GAPS}; 0: no such limit)")
    p.set_defaults(func=_render)
    repo.set_defaults(func=lambda args: repo.print_help() or 2)
