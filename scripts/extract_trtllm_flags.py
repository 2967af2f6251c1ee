#!/usr/bin/env python3
"""Extract the command-line flags of TensorRT-LLM's engine-build tools from its source, at a named commit.

    python scripts/extract_trtllm_flags.py --repo /path/to/TensorRT-LLM --commit v1.2.1 \
        > tests/engines/data/trtllm-1.2-cli-flags.json

Reads (``git show COMMIT:PATH`` when --commit is given, else the work tree) and parses with ``ast`` — nothing is
imported or run:
  * ``examples/quantization/quantize.py``                      -> "quantize.py"
  * ``examples/models/core/llama/convert_checkpoint.py``       -> "convert_checkpoint.py"
    (``examples/llama/convert_checkpoint.py`` before ~0.19)
  * ``tensorrt_llm/commands/build.py`` + ``tensorrt_llm/plugin/plugin.py`` -> "trtllm-build"
    (the plugin flags are generated from ``PluginConfig``'s fields by ``add_plugin_argument``)
Every ``*.add_argument(...)`` call contributes its option strings, whether it takes a value and its ``choices``
(literal lists, or module-level names resolved to literals; otherwise ``null`` with the expression kept in
``choices_expr``). The output keeps the shape tests/engines/test_build_commands.py reads, with the repo, commit and
paths it came from.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

TOOLS = {
    "quantize.py": ["examples/quantization/quantize.py"],
    "convert_checkpoint.py": ["examples/models/core/llama/convert_checkpoint.py", "examples/llama/convert_checkpoint.py"],
    "trtllm-build": ["tensorrt_llm/commands/build.py"],
}
PLUGIN_FILE = "tensorrt_llm/plugin/plugin.py"
_NO_VALUE_ACTIONS = {"store_true", "store_false", "count", "help", "version"}


class SourceTree:
    """Files of a TensorRT-LLM checkout, at ``commit`` (git) or as they are on disk."""

    def __init__(self, repo: Path, commit: str | None):
        self.repo, self.commit = repo, commit

    def read(self, path: str) -> str | None:
        if self.commit is None:
            file = self.repo / path
            return file.read_text(encoding="utf-8") if file.is_file() else None
        proc = subprocess.run(["git", "-C", str(self.repo), "show", f"{self.commit}:{path}"], capture_output=True,
                              text=True, check=False)
        return proc.stdout if proc.returncode == 0 else None

    def resolved_commit(self) -> str | None:
        if self.commit is None:
            return None
        proc = subprocess.run(["git", "-C", str(self.repo), "rev-parse", f"{self.commit}^{{commit}}"],
                              capture_output=True, text=True, check=False)
        return proc.stdout.strip() or None


def _literal(node: ast.AST, names: dict[str, ast.AST]):
    """A literal value of ``node`` (module-level names and ``dict.keys()`` of literal dicts resolved)."""
    if isinstance(node, ast.Name) and node.id in names:
        return _literal(names[node.id], names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "keys":
        value = _literal(node.func.value, names)
        return list(value) if isinstance(value, dict) else None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def _module_names(tree: ast.Module) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            names[stmt.targets[0].id] = stmt.value
    return names


def argparse_flags(source: str) -> dict[str, dict]:
    """Flags of every ``add_argument`` call in ``source``."""
    tree = ast.parse(source)
    names = _module_names(tree)
    flags: dict[str, dict] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        options = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                   and a.value.startswith("-")]
        if not options:
            continue  # a positional argument
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        action = _literal(kw["action"], names) if "action" in kw else None
        nargs = _literal(kw["nargs"], names) if "nargs" in kw else None
        info: dict = {"takes_value": action not in _NO_VALUE_ACTIONS and nargs != 0, "choices": None}
        if "choices" in kw:
            choices = _literal(kw["choices"], names)
            if isinstance(choices, (list, tuple, set)):
                info["choices"] = sorted(str(c) for c in choices) if isinstance(choices, set) else [
                    str(c) for c in choices]
            else:
                info["choices_expr"] = ast.unparse(kw["choices"])
        if nargs is not None:
            info["nargs"] = nargs
        for option in options:
            flags[option] = dict(info)
    return flags


def plugin_flags(source: str) -> dict[str, dict]:
    """Flags ``add_plugin_argument`` generates from ``PluginConfig``: str fields take ``plugin_options`` (or the
    field's own choices), bool fields enable/disable, others a free value. Only names in ``cli_plugin_args`` when
    the module has that list."""
    tree = ast.parse(source)
    names = _module_names(tree)
    allowed = _literal(names["cli_plugin_args"], names) if "cli_plugin_args" in names else None
    options = _literal(names.get("plugin_options", ast.Constant(None)), names)
    flags: dict[str, dict] = {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == "PluginConfig"):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            name = stmt.target.id
            if name.startswith("_") or (allowed is not None and name not in allowed):
                continue
            annotation = ast.unparse(stmt.annotation)
            if "bool" in annotation:
                flags[f"--{name}"] = {"takes_value": True, "choices": ["enable", "disable"]}
            elif "str" in annotation or "Literal" in annotation:
                field_choices = None
                if isinstance(stmt.value, ast.Call):
                    for k in stmt.value.keywords:
                        if k.arg == "metadata" and isinstance(k.value, ast.Dict):
                            for mk, mv in zip(k.value.keys, k.value.values):
                                if isinstance(mk, ast.Constant) and mk.value == "choices":
                                    field_choices = _literal(mv, names)
                choices = field_choices if field_choices is not None else options
                flags[f"--{name}"] = {"takes_value": True,
                                      "choices": [str(c) for c in choices] if choices is not None else None}
            else:
                flags[f"--{name}"] = {"takes_value": True, "choices": None}
    return flags


def extract(tree: SourceTree) -> dict:
    out: dict = {"_note": "TensorRT-LLM engine-build flags extracted by scripts/extract_trtllm_flags.py (ast, no "
                          "import) from the source named in _sources.",
                 "_sources": {"repo": str(tree.repo), "commit": tree.resolved_commit() or tree.commit}}
    for tool, candidates in TOOLS.items():
        for path in candidates:
            source = tree.read(path)
            if source is not None:
                out[tool] = argparse_flags(source)
                out["_sources"][tool] = path
                break
        else:
            raise SystemExit(f"{tool}: none of {candidates} exists at {tree.commit or 'the work tree'}")
    plugin = tree.read(PLUGIN_FILE)
    if plugin is not None:
        out["trtllm-build"].update(plugin_flags(plugin))
        out["_sources"]["trtllm-build plugins"] = PLUGIN_FILE
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", required=True, type=Path, help="TensorRT-LLM checkout (work tree or git dir)")
    p.add_argument("--commit", help="tag, branch or commit to read (git show); default: the work tree")
    args = p.parse_args(argv)
    json.dump(extract(SourceTree(args.repo, args.commit)), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
