"""The layout by process: production packages never import the CPU stand-in or the test harness, packages stay
small, and no folder is named ``build`` (pytest, ruff and Python's .gitignore template skip such folders)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import koserve

REPO = Path(__file__).resolve().parents[2]
SRC = Path(koserve.__file__).resolve().parent

# What runs in production: the Triton stubs, `koserve serve`, `koserve repo render`, engine builds, the client, the
# gateway, the load test (locust users are imported only inside locust) and the shared foundations.
PRODUCTION = ("triton_models", "llmapi_engine", "server", "repo", "engines", "client", "gateway", "loadtest",
              "text", "chat", "profiles", "smoke", "cli")
FENCED = ("koserve.cpu_engine", "koserve.testing")
LOCUST_ONLY = {"koserve.loadtest.users", "koserve.loadtest.metrics", "koserve.loadtest.locustfile",
               "koserve.loadtest.locust_shapes"}
MAX_PACKAGE_LINES = 3000

_PROBE = """
import importlib, json, pkgutil, sys
names = []
for pkg in {packages!r}:
    mod = importlib.import_module("koserve." + pkg)
    names.append(mod.__name__)
    for info in pkgutil.walk_packages(mod.__path__, mod.__name__ + "."):
        if info.name in {skip!r}:
            continue
        importlib.import_module(info.name)
        names.append(info.name)
print(json.dumps({{"imported": names, "loaded": sorted(m for m in sys.modules if m.startswith("koserve"))}}))
"""


def _import_in_fresh_interpreter(packages) -> dict:
    code = _PROBE.format(packages=tuple(packages), skip=LOCUST_ONLY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_production_packages_do_not_import_the_cpu_engine_or_the_test_harness():
    result = _import_in_fresh_interpreter(PRODUCTION)
    assert len(result["imported"]) > 50  # every module of every production package was imported
    leaked = [m for m in result["loaded"] if m.startswith(FENCED)]
    assert leaked == [], f"production imports pulled in {leaked}"


def test_the_fence_test_sees_a_leak():
    # The probe does catch an import of the fenced packages (so the test above can fail).
    result = _import_in_fresh_interpreter(("cpu_engine",))
    assert any(m.startswith("koserve.cpu_engine") for m in result["loaded"])


def _package_lines(path: Path) -> int:
    return sum(len(f.read_text(encoding="utf-8").splitlines()) for f in path.rglob("*.py"))


def test_no_package_holds_more_than_3000_lines():
    sizes = {p.name: _package_lines(p) for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"triton_models", "server", "cpu_engine", "testing"} <= set(sizes)
    too_big = {name: n for name, n in sizes.items() if n > MAX_PACKAGE_LINES}
    assert too_big == {}, f"packages over {MAX_PACKAGE_LINES} lines: {too_big}"


def test_no_folder_is_named_build():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert files, "not a git checkout"
    build_dirs = sorted({f for f in files if "build" in Path(f).parts[:-1]})
    assert build_dirs == []
