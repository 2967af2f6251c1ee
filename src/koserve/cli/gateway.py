"""``koserve gateway``: serve the OpenAI-compatible API in front of Triton."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "gateway",
        help="OpenAI-compatible HTTP API in front of Triton",
        description="Serve /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics, mapping each "
        "model name to a koserve profile and its Triton server. API keys: KOSERVE_API_KEYS (comma-separated).",
        epilog="example: koserve gateway --model akallama-70b=127.0.0.1:8001 --model komt-13b=http://127.0.0.1:9000",
    )
    p.add_argument("--config", metavar="YAML", help="gateway config file (models, limits)")
    p.add_argument("--model", dest="models", action="append", metavar="NAME=URL[,key=value...]",
                   help="a served model: NAME (also the profile unless profile=...) at Triton URL; options "
                   "profile=, target=ensemble|tensorrt_llm_bls, protocol=grpc|http, tokenizer=DIR, max_tokens=N "
                   "(repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    p.add_argument("--max-request-bytes", type=int, help="largest accepted request body (default 1 MiB)")
    p.add_argument("--request-timeout", type=float, help="seconds allowed per request (default 300)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from koserve.gateway import create_app, load_config  # noqa: PLC0415

    config = load_config(args.config, model_specs=args.models, max_request_bytes=args.max_request_bytes,
                         request_timeout=args.request_timeout)
    app = create_app(config)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=10)
    return 0
