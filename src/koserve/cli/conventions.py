"""The options every `koserve` subcommand spells the same way (docs/cli.md), and the help formatting they share.

One flag per idea: ``-p/--profile`` picks the model profile, ``--url`` the server, ``--target`` the Triton model
(``ensemble`` or ``tensorrt_llm_bls``), ``--max-tokens`` the output length, ``--request-timeout`` /
``--ready-timeout`` the time limits; every time value takes a duration (``90``, ``90s``, ``2m``, ``500ms``).
A renamed flag keeps its old spelling as a :class:`DeprecatedAlias` for one release.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from koserve.loadtest.durations import duration_arg

TARGETS = ("ensemble", "tensorrt_llm_bls")
DEFAULT_PROFILE = "akallama-70b"
# The release that drops the deprecated spellings.
ALIASES_REMOVED_IN = "0.3"
SUBCOMMAND_METAVAR = "COMMAND"
TIME = "TIME"
TIME_FORMS = "a duration: 90, 90s, 2m, 1h30m or 500ms"


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help unless the help already names its default or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or isinstance(action, DeprecatedAlias)
                or default is None or default is False or default == "" or default == argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class DeprecatedAlias(argparse.Action):
    """The old spelling of a renamed flag: stores into the new flag's dest and warns once on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs.setdefault("help", f"deprecated alias of {new} (removed in koserve {ALIASES_REMOVED_IN})")
        kwargs["default"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"koserve: warning: {option_string} is deprecated and goes in koserve {ALIASES_REMOVED_IN}; "
              f"use {self.new}", file=sys.stderr)
        if self.nargs in ("+", "*") or isinstance(self.nargs, int) and self.nargs > 1:
            values = list(values)
        setattr(namespace, self.dest, values)


def add_alias(parser: Any, old: str, new: str, *, dest: str, **kwargs: Any) -> None:
    """Register ``old`` as a deprecated spelling of ``new`` (same dest)."""
    parser.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, **kwargs)


def add_profile(parser: Any, *, default: str | None = DEFAULT_PROFILE, repeatable: bool = False,
                required: bool = False, env: bool = False, help_suffix: str = "") -> None:
    """``-p/--profile PROFILE``: the model profile (chat template, stop words, tokenizer family)."""
    what = "model profile: a built-in name (see `koserve profiles`) or a profile YAML file" + help_suffix
    if repeatable:
        parser.add_argument("-p", "--profile", action="append", metavar="PROFILE",
                            help=f"{what}; repeatable (default: every built-in profile)")
        return
    if env:
        parser.add_argument("-p", "--profile", metavar="PROFILE", default=os.environ.get("KOSERVE_PROFILE", default),
                            help=f"{what} (default: $KOSERVE_PROFILE, else {default})")
        return
    parser.add_argument("-p", "--profile", metavar="PROFILE", default=default, required=required, help=what)


def add_url(parser: Any, what: str, *, default: str | None = None) -> None:
    """``--url URL``: the server to talk to (env KOSERVE_URL)."""
    parser.add_argument("--url", default=os.environ.get("KOSERVE_URL", default), metavar="URL",
                        help=f"{what}; env KOSERVE_URL" + (f" (default: {default})" if default else ""))


def add_target(parser: Any, *, repeatable: bool = False) -> None:
    """``--target``: the Triton model a request goes to (``--model`` before 0.2)."""
    if repeatable:
        parser.add_argument("--target", dest="targets", action="append", choices=TARGETS,
                            help="Triton model to call; repeatable (default: both)")
        add_alias(parser, "--models", "--target", dest="targets", nargs="+", choices=TARGETS, metavar="TARGET")
        return
    parser.add_argument("--target", default="ensemble", choices=TARGETS,
                        help="Triton model to call: the ensemble or the BLS model")
    add_alias(parser, "--model", "--target", dest="target", choices=TARGETS, metavar="TARGET")


def add_max_tokens(parser: Any, *, default: int | None, help: str | None = None) -> None:
    parser.add_argument("--max-tokens", type=int, default=default, metavar="N",
                        help=help or "most tokens to generate per reply")


def add_time(parser: Any, flag: str, *, default: str | None, help: str, **kwargs: Any) -> None:
    """A time flag: takes a duration, its default written as one (``"2m"``; argparse parses string defaults)."""
    parser.add_argument(flag, type=duration_arg, default=default, metavar=TIME, help=help, **kwargs)


def seconds_text(seconds: float) -> str:
    """``15.0`` → ``15s``: a number of seconds as a duration default."""
    return f"{seconds:g}s"


def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """``(words, parser)`` for ``parser`` and every subcommand parser below it."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield from walk(sub, (*prefix, name))


def finish(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Apply the shared conventions to every parser of the tree: defaults shown, one subcommand metavar."""
    for _, p in walk(parser):
        p.formatter_class = DefaultsFormatter
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                action.metavar = SUBCOMMAND_METAVAR
    return parser
