"""The `koserve` command line.

Each module in this package that defines ``register(subparsers)`` adds its own
subcommand(s); a registered parser sets ``func`` (called with the parsed args,
returning an exit code). Modules import heavy dependencies lazily, inside the
handler, so `koserve --help` works with only the client extra installed. Flags
follow one convention (docs/cli.md, :mod:`koserve.cli.conventions`).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from koserve import __version__
from koserve.cli.conventions import SUBCOMMAND_METAVAR, finish
from koserve.errors import KoserveError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="koserve", description=__doc__.splitlines()[0],
        epilog="Each command: koserve COMMAND --help. Flags, durations, exit codes and renamed flags: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"koserve {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar=SUBCOMMAND_METAVAR)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return finish(parser)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KoserveError as exc:
        print(f"koserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
