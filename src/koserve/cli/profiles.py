"""``koserve profiles``: list the built-in model profiles (what ``-p/--profile`` takes)."""

from __future__ import annotations

import argparse
from typing import Any


def _list(args: argparse.Namespace) -> int:
    from koserve.profiles import load_profile  # noqa: PLC0415
    from koserve.profiles.loader import builtin_profile_names  # noqa: PLC0415

    for name in builtin_profile_names():
        p = load_profile(name)
        print(f"{name:14s} {p.display_name:28s} {p.chat.format:6s} {p.hf_id}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "profiles",
        help="list the built-in model profiles (the names -p/--profile takes)",
        description="One line per built-in profile: name, model, chat format, Hugging Face id. -p/--profile also "
        "takes a profile YAML file of your own.",
    )
    p.set_defaults(func=_list)
