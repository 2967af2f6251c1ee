#!/usr/bin/env python3
"""Keep the production image's TensorRT-LLM dependencies where they are while koserve is installed.

Run with the image's own ``python3`` (the Dockerfile does; tests/image runs it in the image stand-in):

    image_pins.py before --import tensorrt_llm --root tensorrt_llm --state S.json --constraints C.txt
    pip install -c constraints-trtllm-1.2.1.txt -c C.txt koserve[server]
    image_pins.py after --state S.json

``before`` fails unless every ``--import`` module imports; it records the version of every installed distribution,
prints those the roots require (directly or not), and writes them as ``name==version`` constraints so that pip can
change none of them. ``after`` prints the versions again, fails if any of those distributions changed version or
disappeared, and runs ``pip check``. Standard library only (the image's pip is not importable as a library).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    versions: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            versions.setdefault(canonical(name), dist.version)
    return versions


_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?")


def _applies(requirement: str) -> bool:
    """Whether a Requires-Dist line applies without extras (its marker, if any, evaluated for this interpreter)."""
    if ";" not in requirement:
        return True
    marker = requirement.split(";", 1)[1]
    if "extra" in marker:
        return False
    try:
        from packaging.markers import Marker  # noqa: PLC0415 - in the image and in koserve's server extra
    except ImportError:
        return True  # keep it: watching one package too many is safe
    return Marker(marker.strip()).evaluate()


def closure(roots: list[str]) -> list[str]:
    """The roots and every distribution they require, transitively, that is installed."""
    have = installed()
    seen: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen or name not in have:
            continue
        seen.add(name)
        for req in md.distribution(name).requires or []:
            match = _REQ.match(req)
            if match and _applies(req):
                todo.append(canonical(match.group(1)))
    return sorted(seen)


def _print_versions(title: str, names: list[str], versions: dict[str, str]) -> None:
    print(f"image_pins: {title} ({len(names)} distributions)")
    for name in names:
        print(f"  {name}=={versions.get(name, '(missing)')}")


def before(args: argparse.Namespace) -> int:
    for module in args.imports:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure to import is the finding
            print(f"image_pins: `{sys.executable}` cannot import {module} ({type(exc).__name__}: {exc}); this is "
                  "not the interpreter of the TensorRT-LLM image (expected /opt/venv-tritonserver/bin/python3 first "
                  "on PATH)", file=sys.stderr)
            return 1
    for module in args.finds:
        if importlib.util.find_spec(module) is None:
            print(f"image_pins: `{sys.executable}` has no module {module}; this is not the interpreter of the "
                  "TensorRT-LLM image", file=sys.stderr)
            return 1
    versions = installed()
    missing = [r for r in args.roots if canonical(r) not in versions]
    if missing:
        print(f"image_pins: roots not installed: {', '.join(missing)}", file=sys.stderr)
        return 1
    watched = closure(args.roots)
    _print_versions(f"before, required by {', '.join(args.roots)}", watched, versions)
    Path(args.state).write_text(json.dumps({"python": sys.executable, "roots": args.roots, "watched": watched,
                                            "versions": versions}, indent=1), encoding="utf-8")
    Path(args.constraints).write_text(
        "".join(f"{name}=={versions[name]}\n" for name in watched), encoding="utf-8")
    return 0


def after(args: argparse.Namespace) -> int:
    state = json.loads(Path(args.state).read_text(encoding="utf-8"))
    now = installed()
    watched = state["watched"]
    _print_versions("after", watched, now)
    changed = [f"{n}: {state['versions'][n]} -> {now.get(n, '(removed)')}" for n in watched
               if now.get(n) != state["versions"][n]]
    added = sorted(set(now) - set(state["versions"]))
    if added:
        print("image_pins: added " + ", ".join(f"{n}=={now[n]}" for n in added))
    status = 0
    if changed:
        print("image_pins: installing koserve changed what " + ", ".join(state["roots"]) + " requires:\n  "
              + "\n  ".join(changed), file=sys.stderr)
        status = 1
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    print(check.stdout.strip())
    if check.returncode != 0:
        print(f"image_pins: pip check failed:\n{check.stdout}{check.stderr}", file=sys.stderr)
        status = 1
    if status == 0:
        print(f"image_pins: {len(watched)} pinned distributions unchanged, pip check clean")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="image_pins.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("before", help="check the interpreter, record versions, write constraints")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module that must import (the Dockerfile: tensorrt_llm)")
    p.add_argument("--find", dest="finds", action="append", default=[], metavar="MODULE",
                   help="a module that must be installed, located without importing it (for a builder where the "
                   "import itself cannot run, e.g. one without the GPU driver)")
    p.add_argument("--root", dest="roots", action="append", required=True, metavar="DIST",
                   help="a distribution whose requirements (transitively) must not change")
    p.add_argument("--state", required=True, help="where to record the versions (JSON)")
    p.add_argument("--constraints", required=True, help="where to write name==version constraints for pip -c")
    p.set_defaults(func=before)
    p = sub.add_parser("after", help="print versions, fail on any change, run pip check")
    p.add_argument("--state", required=True)
    p.set_defaults(func=after)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
