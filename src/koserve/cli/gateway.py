"""``koserve gateway``: serve the OpenAI-compatible API in front of Triton."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    from koserve.cli.conventions import add_time  # noqa: PLC0415

    p = subparsers.add_parser(
        "gateway",
        help="OpenAI-compatible HTTP API in front of Triton",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics, mapping each "
        "model name to a koserve profile and its Triton server. API keys: KOSERVE_API_KEYS (comma-separated). "
        "Tokenizer (for usage.prompt_tokens and the token-level injection check): tokenizer=DIR, else the fixture "
        "tokenizer of the profile's family, looked up in $KOSERVE_CACHE if set, else <checkout>/.cache/koserve "
        "when koserve runs from a source checkout (where `make fixtures` writes), else ~/.cache/koserve; "
        "tokenizer=none goes without (prompt_tokens 0). Sampling without a seed gets a random seed per request. "
        "/v1/completions prompts get the same injection policy as chat messages unless --allow-raw-prompts.",
        epilog="example: koserve gateway --model akallama-70b=127.0.0.1:8001 --model komt-13b=http://127.0.0.1:9000",
    )
    p.add_argument("--config", metavar="YAML", help="gateway config file (models, limits)")
    p.add_argument("--model", dest="models", action="append", metavar="NAME=URL[,key=value...]",
                   help="an OpenAI model name the gateway serves: NAME (also the profile unless profile=...) at "
                   "Triton URL; options profile=, target=engine|ensemble|tensorrt_llm_bls (default: engine on a gRPC URL with a "
                   "tokenizer: ids straight to tensorrt_llm; else ensemble), protocol=grpc|http, tokenizer=DIR|none, "
                   "max_tokens=N, max_input_len=N,max_seq_len=N (the engine's limits for target engine; default: "
                   "read from the server) (repeatable)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--max-request-bytes", type=int, metavar="N", help="largest accepted request body (default: 1 MiB)")
    add_time(p, "--request-timeout", default=None,
             help="time allowed per request (default: the config file's request_timeout, else 5m)")
    p.add_argument("--allow-raw-prompts", action="store_true", default=None,
                   help="let /v1/completions prompts contain the chat format's control tokens and role markers "
                   "(pre-templated prompts); default: refused like in chat messages")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="gateway processes sharing the port (default 1): the gateway tokenizes and detokenizes, so it "
                   "scales by processes; /metrics sums every worker's (PROMETHEUS_MULTIPROC_DIR)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="log level of the gateway and uvicorn")
    add_time(p, "--drain-grace", default=None,
             help="on SIGTERM: /health and new /v1 requests answer 503 + Retry-After, requests in flight get up to "
             "this long to finish, then the gateway exits (default: 10s + the largest max_tokens of its models x "
             "100ms; a second SIGTERM exits at once)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging  # noqa: PLC0415

    from koserve.gateway import create_app, load_config  # noqa: PLC0415
    from koserve.gateway.drain import run_gateway  # noqa: PLC0415

    from koserve.errors import ConfigError  # noqa: PLC0415

    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers is {args.workers}; give 1 to 64 processes (about one per free core)")
    overrides = dict(max_request_bytes=args.max_request_bytes, request_timeout=args.request_timeout,
                     allow_raw_prompts=args.allow_raw_prompts)
    config = load_config(args.config, model_specs=args.models, **overrides)  # checked once, before any worker
    # the gateway's own start-up lines (which tokenizer each model uses) in uvicorn's format
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    grace = args.drain_grace if args.drain_grace is not None else gateway_drain_grace(config)
    if args.workers > 1:
        from koserve.gateway.workers import WorkerSpec, run_workers  # noqa: PLC0415

        spec = WorkerSpec(args.config, list(args.models or []), overrides, args.host, args.port, args.log_level,
                          grace)
        return run_workers(spec, args.workers)
    app = create_app(config)
    run_gateway(app, host=args.host, port=args.port, log_level=args.log_level, grace_s=grace)
    return 0


def gateway_drain_grace(config) -> float:
    """koserve serve's rule (koserve.server.drain.drain_grace) for the longest answer any of the models gives."""
    from koserve.profiles import load_profile  # noqa: PLC0415
    from koserve.server.drain import drain_grace  # noqa: PLC0415

    return max(drain_grace(route.max_tokens or load_profile(route.profile).generation.max_new_tokens)
               for route in config.models)
