"""Version preflight: the TensorRT-LLM that runs, the one that built the engine and the one the recipe expects
must be the same release. A TensorRT engine only deserialises in the TensorRT-LLM (and TensorRT) that built it, so
a mismatch stops ``koserve build run``, ``koserve serve`` (GPU) and the chart's init container with an error
that names all three values.

* runtime: ``tensorrt_llm.__version__`` as the given interpreter imports it (a subprocess: importing TensorRT-LLM
  initialises CUDA libraries, and the build runs its tools under ``--python``);
* engine: ``version`` in the engine folder's ``config.json`` (written by trtllm-build);
* expected: the recipe's ``trtllm_version`` (or the engine manifest's record of it, or koserve's pinned release).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from koserve.engines.versions import TRITON_TRTLLM_IMAGE, TRTLLM_VERSION
from koserve.errors import KoserveError

NOT_BUILT = "not built yet"
_MARK = "KOSERVE_PREFLIGHT "
# What quantize.py imports besides TensorRT-LLM (ModelOpt and HF datasets: both are tensorrt_llm wheel dependencies).
QUANTIZE_MODULES = ("modelopt", "datasets")
# tensorrt_llm/__init__.py takes __version__ from tensorrt_llm/version.py: read that file (ast) when it is there, so
# the check does not import TensorRT-LLM (torch, TensorRT, CUDA libraries: seconds and GBs of RSS, too much for the
# chart's init container); import the package only when it has no version.py.
_PROBE = r"""
import ast, importlib.util, json, os, sys
out = {"version": None, "error": None, "missing": []}
try:
    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is None:
        raise ModuleNotFoundError("No module named 'tensorrt_llm'")
    out["file"] = spec.origin
    locations = list(spec.submodule_search_locations or [])
    version_py = os.path.join(locations[0], "version.py") if locations else ""
    if version_py and os.path.isfile(version_py):
        for node in ast.parse(open(version_py, encoding="utf-8").read()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__version__" for t in node.targets):
                out["version"] = str(ast.literal_eval(node.value))
        out["how"] = "tensorrt_llm/version.py"
    if out["version"] is None:
        import tensorrt_llm
        out["version"] = str(getattr(tensorrt_llm, "__version__", None))
        out["how"] = "import tensorrt_llm"
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}"
for name in sys.argv[1:]:
    if importlib.util.find_spec(name) is None:
        out["missing"].append(name)
print("KOSERVE_PREFLIGHT " + json.dumps(out), flush=True)
"""


class PreflightError(KoserveError):
    """The TensorRT-LLM versions disagree, or TensorRT-LLM cannot be imported."""


@dataclass(frozen=True)
class RuntimeProbe:
    """What ``python`` sees: ``tensorrt_llm.__version__`` (None when the import failed) and missing modules."""

    python: str
    version: str | None
    error: str | None = None
    location: str | None = None
    missing: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.version is not None:
            return self.version
        return f"not importable ({self.error})" if self.error else "not importable"


@dataclass(frozen=True)
class VersionCheck:
    """The three versions and where each came from."""

    runtime: RuntimeProbe | None
    engine: str | None  # None: no engine folder given; NOT_BUILT: folder without config.json
    expected: str
    expected_from: str = "recipe trtllm_version"
    engine_config: Path | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        parts = []
        if self.runtime is not None:
            parts.append(f"runtime tensorrt_llm.__version__ = {self.runtime.describe()} ({self.runtime.python})")
        if self.engine is not None:
            parts.append(f"engine {self.engine_config} version = {self.engine}")
        parts.append(f"{self.expected_from} = {self.expected}")
        return "; ".join(parts)


def probe_runtime(python: str = "python3", *, modules: tuple[str, ...] = (), timeout: float = 120.0) -> RuntimeProbe:
    """Import tensorrt_llm under ``python`` and report its version (and which of ``modules`` are missing)."""
    try:
        proc = subprocess.run([python, "-c", _PROBE, *modules], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        return RuntimeProbe(python, None, f"interpreter {python} not found")
    except subprocess.TimeoutExpired:
        return RuntimeProbe(python, None, f"import tensorrt_llm took over {timeout:.0f}s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith(_MARK)]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return RuntimeProbe(python, None, tail[0])
    data = json.loads(lines[-1][len(_MARK):])
    return RuntimeProbe(python, data.get("version"), data.get("error"), data.get("file"),
                        tuple(data.get("missing") or ()))


def engine_version(engine_dir: str | Path) -> tuple[str, Path]:
    """``version`` from the engine folder's config.json (``NOT_BUILT`` when there is no config.json yet)."""
    path = Path(engine_dir) / "config.json"
    if not path.is_file():
        return NOT_BUILT, path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PreflightError(f"engine config {path} is unreadable: {exc}") from None
    version = data.get("version") if isinstance(data, dict) else None
    if version is None:
        raise PreflightError(f"engine config {path} has no 'version': not written by TensorRT-LLM 1.x trtllm-build")
    return str(version), path


def expected_from_manifest(engine_dir: str | Path) -> str | None:
    """The recipe's trtllm_version recorded in ``engine_manifest.json`` (None when there is no manifest)."""
    path = Path(engine_dir) / "engine_manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    value = (data.get("versions") or {}).get("tensorrt_llm_expected")
    return str(value) if value else None


def check_versions(
    expected: str,
    *,
    engine_dir: str | Path | None = None,
    runtime: RuntimeProbe | None = None,
    expected_from: str = "recipe trtllm_version",
) -> VersionCheck:
    """Compare the runtime and engine versions with ``expected``; ``problems`` lists each disagreement."""
    engine, config = (None, None)
    if engine_dir is not None:
        engine, config = engine_version(engine_dir)
    problems = []
    if runtime is not None and runtime.version != expected:
        problems.append("runtime")
    if engine is not None and engine != NOT_BUILT and engine != expected:
        problems.append("engine")
    return VersionCheck(runtime, engine, expected, expected_from, config, problems)


def require_versions(check: VersionCheck, *, what: str) -> VersionCheck:
    """Raise PreflightError naming all three values unless ``check`` is ok."""
    if check.ok:
        return check
    raise PreflightError(
        f"{what}: TensorRT-LLM version mismatch ({', '.join(check.problems)}): {check.summary()}. "
        f"An engine only loads in the TensorRT-LLM release that built it: run inside {TRITON_TRTLLM_IMAGE} "
        f"(TensorRT-LLM {TRTLLM_VERSION}) and build the engine there, or fix the recipe's trtllm_version."
    )


def preflight_engine(
    engine_dir: str | Path,
    *,
    python: str = "python3",
    expected: str | None = None,
    expected_from: str = "expected (--expect)",
    what: str = "preflight",
) -> VersionCheck:
    """The serving check: runtime and built engine against the expected release (given, else the manifest's,
    else koserve's pinned one). The engine must exist."""
    engine_dir = Path(engine_dir)
    if not (engine_dir / "config.json").is_file():
        raise PreflightError(f"{what}: engine folder {engine_dir} has no config.json (build the engine first)")
    source = expected_from
    if expected is None:
        expected = expected_from_manifest(engine_dir)
        source = "recipe trtllm_version (engine_manifest.json)"
    if expected is None:
        expected, source = TRTLLM_VERSION, "koserve's pinned TensorRT-LLM"
    runtime = probe_runtime(python)
    return require_versions(check_versions(expected, engine_dir=engine_dir, runtime=runtime, expected_from=source),
                            what=what)


_MODEL_PATH_RE = re.compile(r'key:\s*"gpt_model_path"\s*value:\s*\{\s*string_value:\s*"([^"]*)"')


def engine_dir_of_repo(repo: str | Path) -> Path | None:
    """The engine folder a rendered GPU repository serves (``gpt_model_path`` of its C++ ``tensorrt_llm`` model);
    None for a CPU repository."""
    cfg = Path(repo) / "tensorrt_llm" / "config.pbtxt"
    if not cfg.is_file():
        return None
    text = cfg.read_text(encoding="utf-8")
    if not re.search(r'^backend:\s*"tensorrtllm"', text, re.M):
        return None
    match = _MODEL_PATH_RE.search(text)
    if match is None:
        raise PreflightError(f"{cfg} uses the tensorrtllm backend but has no gpt_model_path parameter")
    return Path(match.group(1))


def preflight_repo(repo: str | Path, *, python: str = sys.executable) -> VersionCheck | None:
    """``koserve serve``'s check on a GPU repository (None: not a GPU repository, nothing to check)."""
    engine = engine_dir_of_repo(repo)
    if engine is None:
        return None
    return preflight_engine(engine, python=python, what=f"serve {repo}")


def check_gpus_per_node(engine_dir: str | Path, gpus_per_node: int) -> None:
    """A multi-node engine must have been built for the GPUs of one pod: each rank uses CUDA device
    ``rank % mapping.gpus_per_node`` (trtllm-build's default 8), which a smaller pod lacks."""
    path = Path(engine_dir) / "config.json"
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))["pretrained_config"]["mapping"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PreflightError(f"engine config {path} has no pretrained_config.mapping: {exc}") from None
    built = mapping.get("gpus_per_node", 8)
    if built != gpus_per_node:
        raise PreflightError(
            f"engine {engine_dir} was built with gpus_per_node {built} but each pod has {gpus_per_node} GPU(s): a rank "
            f"would open CUDA device rank % {built}. Rebuild with a recipe whose parallelism.gpus_per_node is "
            f"{gpus_per_node} (trtllm-build --gpus_per_node {gpus_per_node})"
        )
