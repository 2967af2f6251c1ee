"""Locust command-line options added by the koserve locustfile.

One table serves both sides: the locustfile registers these options on locust's parser, and
``koserve loadtest`` turns its own arguments into the same flags. No locust import here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Locust itself owns --host, --users, --spawn-rate, --run-time, --profile, --csv ...; ours do not clash.
DEFAULT_OSL = 128


@dataclass(frozen=True)
class Option:
    flag: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("--target-model", str, "ensemble", "Triton model to call (ensemble or tensorrt_llm_bls)"),
    Option("--model-profile", str, "akallama-70b", "koserve model profile (chat template, stop words, tokenizer)"),
    Option("--openai-model", str, "", "model name sent to the OpenAI gateway (default: the profile name)"),
    Option("--prompts", str, "all", "prompt set: short, medium, long, all, a .jsonl path, or synthetic"),
    Option("--isl", int, 128, "synthetic prompts: input length in tokens (mean)"),
    Option("--isl-stddev", float, 0.0, "synthetic prompts: input length standard deviation (0 = fixed)"),
    Option("--osl", int, DEFAULT_OSL, "output length: max_tokens per request (mean)"),
    Option("--osl-stddev", float, 0.0, "output length standard deviation (0 = fixed)"),
    Option("--ignore-eos", str, "false", "true: ask for exactly max_tokens (min_length = max_tokens)",
           ("true", "false")),
    Option("--seed", int, 0, "seed for prompt order, synthetic text, lengths and Poisson arrivals"),
    Option("--tokenizer", str, "auto",
           "tokenizer for counting tokens: a checkpoint folder / tokenizer.json, 'auto' (the profile's "
           "fixture tokenizer when present) or 'none' (count streamed chunks)"),
    Option("--max-requests", int, 0,
           "stop after this many measured requests (0 = no limit; per locust process; warm-up not counted)"),
    Option("--warmup-seconds", float, 0.0,
           "requests sent in the first SECONDS after the first send are warm-up: recorded, left out of the figures"),
    Option("--warmup-requests", int, 0, "the first N requests (per locust process) are warm-up"),
    Option("--request-timeout", float, 60.0, "seconds one request may take before it counts as failed"),
    Option("--records-dir", str, "", "write per-request records (JSONL) into this folder"),
    Option("--shape", str, "fixed", "load shape", ("fixed", "step", "poisson")),
    Option("--shape-duration", float, 60.0, "seconds the shape runs"),
    Option("--concurrency", int, 1, "fixed: concurrent streams; step: starting users"),
    Option("--ramp-rate", float, 0.0, "users started per second (0 = all at once)"),
    Option("--step-users", int, 1, "step: users added per step"),
    Option("--step-duration", float, 10.0, "step: seconds per step"),
    Option("--max-users", int, 0, "step: user ceiling; poisson: most requests in flight (0 = derived)"),
    Option("--request-rate", float, 1.0, "poisson: requests started per second"),
)


def add_locust_arguments(parser: Any) -> None:
    """Register the options on locust's ``init_command_line_parser`` parser."""
    group = parser.add_argument_group("koserve")
    for opt in OPTIONS:
        kwargs: dict[str, Any] = dict(type=opt.type, default=opt.default, help=opt.help)
        if opt.choices:
            kwargs["choices"] = list(opt.choices)
        group.add_argument(opt.flag, **kwargs)


def to_locust_flags(values: dict[str, Any]) -> list[str]:
    """Turn ``{dest: value}`` into locust command-line flags (only known options, skipping None)."""
    flags: list[str] = []
    by_dest = {o.dest: o for o in OPTIONS}
    for dest, value in values.items():
        opt = by_dest.get(dest)
        if opt is None:
            raise KeyError(f"unknown koserve locust option {dest!r}")
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        flags += [opt.flag, str(value)]
    return flags
