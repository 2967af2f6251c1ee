"""`koserve build run`: run a recipe's steps on a GPU box, resumably, and record the engine.

* Before anything starts: the planner must accept the recipe, the tools must exist, and
  nvidia-smi must show enough GPUs of the right architecture with enough free memory for
  the steps that will actually run.
* Each step logs to ``<workdir>/logs/<step>.log`` and reports its elapsed time.
* A finished step leaves a stamp (``<workdir>/state/<step>.json``): sha256 of its command line,
  of its inputs and of its outputs. On the next run a step whose stamp still matches is skipped;
  once one step runs, every later step runs too.
* The engine folder gets ``engine_manifest.json``: recipe, versions, command lines, GPU, build
  times and checksums of every output file. A ``backend: pytorch`` recipe builds a Hugging Face
  checkpoint for the LLM API instead, with ``checkpoint_manifest.json`` (same record, plus the
  ``hf_quant_config.json`` quantization checked against the recipe).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from koserve import __version__
from koserve.engines.calibration import prepare_calibration_dir
from koserve.engines.commands import BuildPaths, Step, build_steps
from koserve.engines.gpus import GIB, get_gpu
from koserve.engines.manifest import (
    CHECKPOINT_MANIFEST_NAME,
    ENGINE_CONFIG_NAME,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    output_checksums,
    read_checkpoint_quantization,
    read_engine_limits,
)
from koserve.engines.planner import CALIBRATION_GPU_RESERVE_BYTES, calibration_memory_bytes, plan
from koserve.engines.preflight import (
    QUANTIZE_MODULES,
    PreflightError,
    RuntimeProbe,
    check_versions,
    probe_runtime,
    require_versions,
)
from koserve.engines.probe import DetectedGpu, GpuProbeError, probe_gpus
from koserve.engines.recipe import EngineRecipe
from koserve.errors import ConfigError, KoserveError

# Files at least this big are fingerprinted by size and mtime, smaller ones by content.
CONTENT_HASH_LIMIT = 16 << 20
BUILD_HEADROOM_BYTES = 2 * GIB
_IGNORED_OUTPUTS = {MANIFEST_NAME, CHECKPOINT_MANIFEST_NAME}


class BuildError(KoserveError):
    """A build could not start or a step failed."""


@dataclass
class StepResult:
    name: str
    status: str  # "ran" | "skipped" | "would-run" | "would-skip"
    seconds: float = 0.0
    log: str | None = None


@dataclass
class RunResult:
    engine_dir: Path
    manifest_path: Path | None
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0


# -- fingerprints ---------------------------------------------------------------------------------

def fingerprint(paths: tuple[Path, ...] | list[Path]) -> str:
    """sha256 over the listed files/folders: content for small files, size+mtime for big ones."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        digest.update(f"root {root}\n".encode())
        if not root.exists():
            digest.update(b"missing\n")
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if path.name in _IGNORED_OUTPUTS:
                continue
            rel = path.relative_to(root).as_posix() if root.is_dir() else path.name
            st = path.stat()
            if st.st_size < CONTENT_HASH_LIMIT:
                digest.update(f"{rel} {st.st_size} ".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())
            else:
                digest.update(f"{rel} {st.st_size} {st.st_mtime_ns}".encode())
            digest.update(b"\n")
    return digest.hexdigest()


def command_hash(step: Step) -> str:
    payload = json.dumps({"name": step.name, "argv": step.argv, "extra": step.extra}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _stamp_path(paths: BuildPaths, step: Step) -> Path:
    return paths.state_dir / f"{step.name}.json"


def _read_stamp(paths: BuildPaths, step: Step) -> dict | None:
    try:
        return json.loads(_stamp_path(paths, step).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def step_is_current(paths: BuildPaths, step: Step) -> bool:
    """True when the step's stamp matches its command, its inputs and its outputs as they are now."""
    stamp = _read_stamp(paths, step)
    if not stamp:
        return False
    if not all(Path(o).exists() for o in step.outputs):
        return False
    return (
        stamp.get("command") == command_hash(step)
        and stamp.get("inputs") == fingerprint(step.inputs)
        and stamp.get("outputs") == fingerprint(step.outputs)
    )


def _write_stamp(paths: BuildPaths, step: Step, seconds: float) -> None:
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    stamp = {
        "step": step.name,
        "command": command_hash(step),
        "argv": list(step.argv) if step.argv else None,
        "inputs": fingerprint(step.inputs),
        "outputs": fingerprint(step.outputs),
        "seconds": round(seconds, 3),
        "finished_at": _now(),
    }
    tmp = _stamp_path(paths, step).with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2), encoding="utf-8")
    tmp.replace(_stamp_path(paths, step))


# -- helpers --------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def format_elapsed(seconds: float) -> str:
    """``4.2s``, ``3m07s``, ``1h02m03s``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        return []


# -- preflight ------------------------------------------------------------------------------------

def check_tools(steps: list[Step]) -> None:
    """Every external command of ``steps`` must exist (python scripts: the interpreter and the script)."""
    missing = []
    for step in steps:
        if step.argv is None:
            continue
        exe = step.argv[0]
        if shutil.which(exe) is None:
            missing.append(f"{step.name}: {exe} is not on PATH")
        if step.tool in ("quantize.py", "convert_checkpoint.py") and not Path(step.argv[1]).is_file():
            missing.append(
                f"{step.name}: {step.argv[1]} not found (TensorRT-LLM v1.2.1 examples; pass --trtllm-examples DIR "
                "or set TRTLLM_EXAMPLES)"
            )
    if missing:
        raise BuildError("missing tools:\n  " + "\n  ".join(missing))


def check_toolchain_version(recipe: EngineRecipe, paths: BuildPaths, steps: list[Step]) -> RuntimeProbe:
    """The TensorRT-LLM under ``paths.python`` must be the recipe's release (and an engine already in the output
    folder too); quantize.py also needs ModelOpt and datasets importable. Raises BuildError naming the values."""
    modules = QUANTIZE_MODULES if any(s.tool == "quantize.py" for s in steps) else ()
    runtime = probe_runtime(paths.python, modules=modules)
    check_engine_version(recipe, paths, runtime, engine_built=False)
    if runtime.missing:
        raise BuildError(
            f"quantize.py needs {', '.join(runtime.missing)} importable by {paths.python} (TensorRT-LLM's "
            f"quantization example requirements); install them with: {paths.python} -m pip install -r "
            f"{paths.examples_dir}/quantization/requirements.txt (scripts/build_engines.sh does this)"
        )
    return runtime


def check_engine_version(recipe: EngineRecipe, paths: BuildPaths, runtime: RuntimeProbe | None, *,
                         engine_built: bool = True) -> None:
    """Runtime, engine and recipe versions must agree. Before a build (``engine_built`` False) an engine already in
    the output folder is about to be replaced: it is named in the message but not held against the build."""
    # A HF checkpoint records no TensorRT-LLM version (its config.json is transformers'): only the runtime is checked.
    engine_dir = None if recipe.builds_checkpoint else paths.engine_dir
    check = check_versions(recipe.trtllm_version, engine_dir=engine_dir, runtime=runtime)
    if not engine_built:
        check = replace(check, problems=[p for p in check.problems if p != "engine"])
    try:
        require_versions(check, what=f"build {recipe.name}")
    except PreflightError as exc:
        raise BuildError(str(exc)) from None


def check_gpus(recipe: EngineRecipe, steps: list[Step], gpus: list[DetectedGpu]) -> list[str]:
    """Refuse (BuildError) when the machine's GPUs cannot run ``steps``; return warnings."""
    warnings: list[str] = []
    need = max((s.gpus for s in steps), default=0)
    if need == 0:
        return warnings
    target = get_gpu(recipe.gpu)
    names = ", ".join(sorted({g.name for g in gpus}))
    if len(gpus) < need:
        why = "; ".join(f"{s.name} needs {s.gpus}" for s in steps if s.gpus > len(gpus))
        raise BuildError(
            f"wrong GPU count: this machine shows {len(gpus)} GPU(s) ({names}), the build needs {need} ({why})"
        )
    for g in gpus[:need]:
        major_minor = g.compute_cap.strip()
        if major_minor and major_minor != target.cc_text and recipe.builds_checkpoint:
            # A HF checkpoint is not tied to the GPU that quantized it (ModelOpt calibrates with fake quantization).
            warnings.append(f"GPU {g.index} is {g.name} ({major_minor}); the checkpoint is for {target.display_name} "
                            f"({target.cc_text}): quantizing here is fine, serving needs the target GPU")
            continue
        if major_minor and major_minor != target.cc_text:
            raise BuildError(
                f"wrong GPU: recipe {recipe.name} targets {target.display_name} (compute capability {target.cc_text}) "
                f"but GPU {g.index} is {g.name} ({major_minor}); TensorRT engines only run on the architecture "
                "they were built for: use a recipe for this GPU"
            )
        spec = g.catalogue
        if spec is None or spec.key != target.key:
            warnings.append(f"GPU {g.index} is {g.name}, recipe targets {target.display_name} (same architecture)")
    from koserve.engines.planner import weight_bytes

    for step in steps:
        if step.gpus == 0:
            continue
        if step.name in ("quantize", "convert"):
            per_gpu = calibration_memory_bytes(recipe) // step.gpus + CALIBRATION_GPU_RESERVE_BYTES
            what = f"{step.name} (calibration holds the BF16 model on {step.gpus} GPU(s))"
        else:
            per_gpu = weight_bytes(recipe)[1] + BUILD_HEADROOM_BYTES
            what = f"{step.name} (one rank's weights + {BUILD_HEADROOM_BYTES / GIB:.0f} GiB)"
        short = [g for g in gpus[: step.gpus] if g.memory_free_bytes < per_gpu]
        if short:
            detail = ", ".join(f"GPU {g.index} has {g.memory_free_mib} MiB free" for g in short)
            raise BuildError(
                f"not enough free GPU memory for {what}: needs ~{per_gpu / GIB:.1f} GiB free per GPU; {detail}. "
                "Stop other processes on these GPUs."
            )
    return warnings


# -- the run --------------------------------------------------------------------------------------

def run_build(
    recipe: EngineRecipe,
    paths: BuildPaths,
    *,
    dry_run: bool = False,
    force: bool = False,
    echo: Callable[[str], None] = print,
    heartbeat_seconds: float = 60.0,
    step_timeout: float | None = None,
    probe: Callable[[], list[DetectedGpu]] = probe_gpus,
) -> RunResult:
    """Run (or, with ``dry_run``, describe) the recipe's build. Raises BuildError with a clear message."""
    started = time.monotonic()
    started_at = _now()
    paths = _absolute(recipe, paths)
    p = plan(recipe)
    if not p.ok:
        raise BuildError(f"recipe {recipe.name} is refused by the planner:\n  " + "\n  ".join(p.errors))
    if recipe.checkpoint_is_hub_id and paths.checkpoint == recipe.checkpoint:
        msg = (f"checkpoint {recipe.checkpoint} is a Hugging Face id: download it first "
               f"(huggingface-cli download {recipe.checkpoint} --local-dir DIR) and pass --checkpoint-dir DIR")
        if not dry_run:
            raise BuildError(msg)
        echo(f"note: {msg}")
    elif not Path(paths.checkpoint).is_dir():
        msg = f"checkpoint folder {paths.checkpoint} does not exist"
        if not dry_run:
            raise BuildError(msg)
        echo(f"note: {msg}")

    steps = build_steps(recipe, paths)
    plan_status: list[tuple[Step, bool]] = []
    rerun = force
    for step in steps:
        current = (not rerun) and step_is_current(paths, step)
        if not current:
            rerun = True  # everything after a re-run step runs too
        plan_status.append((step, current))
    to_run = [s for s, current in plan_status if not current]

    result = RunResult(engine_dir=paths.engine_dir, manifest_path=None)
    n = len(steps)
    if dry_run:
        echo(f"dry run: {recipe.name} in {paths.workdir}")
        for i, (step, current) in enumerate(plan_status, 1):
            state = "up to date, would skip" if current else "would run"
            echo(f"[{i}/{n}] {step.name}: {state} (needs {step.gpus} GPU(s))")
            echo("    " + step.shell_multiline().replace("\n", "\n    "))
            result.steps.append(StepResult(step.name, "would-skip" if current else "would-run"))
        return result

    gpus: list[DetectedGpu] = []
    gpu_warnings: list[str] = []
    runtime = None
    if to_run:
        check_tools(to_run)
        runtime = check_toolchain_version(recipe, paths, to_run)
        need = max((s.gpus for s in to_run), default=0)
        if need:
            try:
                gpus = probe()
            except GpuProbeError as exc:
                raise BuildError(str(exc)) from None
            gpu_warnings = check_gpus(recipe, to_run, gpus)
            for w in gpu_warnings:
                echo(f"warning: {w}")
    if not gpus:
        try:
            gpus = probe()
        except GpuProbeError:
            gpus = []

    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    manifest_name = CHECKPOINT_MANIFEST_NAME if recipe.builds_checkpoint else MANIFEST_NAME
    if to_run:
        # The manifest marks a finished engine (serving waits for it): drop it while the engine is rebuilt.
        (paths.engine_dir / manifest_name).unlink(missing_ok=True)
    done: list[str] = []
    for i, (step, current) in enumerate(plan_status, 1):
        prefix = f"[{i}/{n}] {step.name}"
        log_path = paths.logs_dir / f"{step.name}.log"
        if current:
            echo(f"{prefix}: up to date, skipped")
            result.steps.append(StepResult(step.name, "skipped", 0.0, str(log_path)))
            done.append(step.name)
            continue
        echo(f"{prefix}: {step.description}")
        if step.argv:
            echo(f"{prefix}: $ {step.shell()}")
        t0 = time.monotonic()
        _stamp_path(paths, step).unlink(missing_ok=True)
        try:
            _execute(step, log_path, echo=echo, prefix=prefix, heartbeat=heartbeat_seconds, timeout=step_timeout,
                     cwd=paths.workdir)
        except BuildError as exc:
            later = [s.name for s in steps[i:]]
            tail = "\n    ".join(_tail(log_path)) or "(empty log)"
            raise BuildError(
                f"step {step.name} failed after {format_elapsed(time.monotonic() - t0)}: {exc}\n"
                f"  log: {log_path}\n  last lines:\n    {tail}\n"
                + (f"  not run: {', '.join(later)}\n" if later else "")
                + f"  fix the cause and re-run: finished steps ({', '.join(done) or 'none'}) are kept and skipped"
            ) from None
        missing = [str(o) for o in step.outputs if not Path(o).exists() or (Path(o).is_dir() and not any(Path(o).iterdir()))]
        if missing:
            raise BuildError(f"step {step.name} exited 0 but did not write {', '.join(missing)} (log: {log_path})")
        elapsed = time.monotonic() - t0
        _write_stamp(paths, step, elapsed)
        echo(f"{prefix}: done in {format_elapsed(elapsed)} (log: {log_path})")
        result.steps.append(StepResult(step.name, "ran", elapsed, str(log_path)))
        done.append(step.name)

    if runtime is None:
        runtime = probe_runtime(paths.python)
    check_engine_version(recipe, paths, runtime)
    writer = write_checkpoint_manifest if recipe.builds_checkpoint else write_manifest
    result.manifest_path = writer(recipe, paths, steps, result, gpus, started_at, gpu_warnings,
                                  runtime_version=runtime.version)
    result.seconds = time.monotonic() - started
    what = "checkpoint" if recipe.builds_checkpoint else "engine"
    echo(f"{what}: {paths.engine_dir} (manifest {result.manifest_path.name}) in {format_elapsed(result.seconds)}")
    return result


def _absolute(recipe: EngineRecipe, paths: BuildPaths) -> BuildPaths:
    """Absolute paths, so stamps and logged commands do not depend on the working directory."""
    checkpoint = paths.checkpoint
    if not (recipe.checkpoint_is_hub_id and checkpoint == recipe.checkpoint):
        checkpoint = str(Path(checkpoint).expanduser().resolve())
    return replace(paths, workdir=paths.workdir.expanduser().resolve(),
                   engine_dir=paths.engine_dir.expanduser().resolve(), checkpoint=checkpoint)


def _execute(step: Step, log_path: Path, *, echo, prefix: str, heartbeat: float, timeout: float | None,
             cwd: Path) -> None:
    # cwd = the workdir: trtllm-build writes its timing cache (model.cache) to the current directory.
    with log_path.open("w", encoding="utf-8") as log:
        log.write(f"# {_now()} {step.name}\n# {step.shell()}\n")
        log.flush()
        if step.argv is None:
            try:
                _internal_step(step)
            except KoserveError as exc:
                log.write(f"error: {exc}\n")
                raise BuildError(str(exc)) from None
            log.write("ok\n")
            return
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd)
        except OSError as exc:
            raise BuildError(f"cannot start {step.argv[0]}: {exc.strerror}") from None
        try:
            while True:
                try:
                    code = proc.wait(timeout=heartbeat)
                    break
                except subprocess.TimeoutExpired:
                    elapsed = time.monotonic() - t0
                    if timeout is not None and elapsed > timeout:
                        proc.kill()
                        proc.wait()
                        raise BuildError(f"timed out after {format_elapsed(elapsed)} (--step-timeout)") from None
                    echo(f"{prefix}: running {format_elapsed(elapsed)}")
        except KeyboardInterrupt:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        if code != 0:
            raise BuildError(f"{Path(step.argv[1] if step.tool != 'trtllm-build' else step.argv[0]).name} exited with code {code}")


def _internal_step(step: Step) -> None:
    if step.name == "calibration-data":
        dest = step.outputs[0]
        if dest.exists():
            shutil.rmtree(dest)
        prepare_calibration_dir(Path(step.extra["source"]), dest)
        return
    if step.name == "checkpoint":
        assemble_checkpoint(Path(step.extra["weights"]), Path(step.extra["source"]), step.outputs[0])
        return
    raise ConfigError(f"unknown internal step {step.name}")  # pragma: no cover


def assemble_checkpoint(weights: Path, source: Path, dest: Path) -> None:
    """``dest`` = every file of ``weights`` (quantize.py's HF export, or the BF16 source) plus the source's tokenizer
    files the export lacks; hard links where the filesystem allows, else copies. Written to a sibling folder and
    renamed, so a half-assembled checkpoint is never left under ``dest``."""
    from koserve.engines.commands import TOKENIZER_FILES

    if not (weights / "config.json").is_file():
        raise ConfigError(f"{weights} has no config.json: not a Hugging Face checkpoint")
    tmp = dest.with_name(dest.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for path in sorted(p for p in weights.rglob("*") if p.is_file()):
        if path.name in _IGNORED_OUTPUTS or any(part.startswith(".") for part in path.relative_to(weights).parts):
            continue
        _link_or_copy(path, tmp / path.relative_to(weights))
    for name in TOKENIZER_FILES:
        if (source / name).is_file() and not (tmp / name).exists():
            _link_or_copy(source / name, tmp / name)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_checkpoint_manifest(
    recipe: EngineRecipe,
    paths: BuildPaths,
    steps: list[Step],
    result: RunResult,
    gpus: list[DetectedGpu],
    started_at: str,
    warnings: list[str],
    runtime_version: str | None = None,
) -> Path:
    """Write ``checkpoint_manifest.json`` into the checkpoint folder (backend pytorch) and return its path. The
    checkpoint's quantization (``hf_quant_config.json``) must be what the recipe asked for."""
    from koserve.engines.commands import PYTORCH_QUANT_ALGO

    out = paths.engine_dir
    if not (out / "config.json").is_file():
        raise BuildError(f"{out} has no config.json: the build did not produce a Hugging Face checkpoint")
    quant = read_checkpoint_quantization(out)
    q = recipe.quantization
    want = (PYTORCH_QUANT_ALGO[q.precision], "FP8" if q.kv_cache_dtype == "fp8" else None)
    got = (quant.get("quant_algo"), quant.get("kv_cache_quant_algo"))
    if got != want:
        raise BuildError(f"checkpoint {out} is quantized as quant_algo {got[0]}, kv_cache_quant_algo {got[1]} "
                         f"(hf_quant_config.json) but recipe {recipe.name} asks for {want[0]}, {want[1]}")
    stamps = {s.name: (_read_stamp(paths, s) or {}) for s in steps}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "kind": "checkpoint",
        "backend": "pytorch",
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256(),
        "recipe_content": recipe.model_dump(mode="json"),
        "profile": recipe.profile,
        "checkpoint": paths.checkpoint,
        "versions": {
            "koserve": __version__,
            "tensorrt_llm_expected": recipe.trtllm_version,
            "tensorrt_llm_runtime": runtime_version,
            "python": sys.version.split()[0],
        },
        "gpu": {"target": get_gpu(recipe.gpu).display_name, "count": len(gpus),
                "detected": [g.to_dict() for g in gpus]},
        "quantization": {"quant_algo": got[0], "kv_cache_quant_algo": got[1]},
        "serving": {
            "tensor_parallel_size": recipe.parallelism.tp,
            "pipeline_parallel_size": recipe.parallelism.pp,
            "max_batch_size": recipe.limits.max_batch_size,
            "max_input_len": recipe.limits.max_input_len,
            "max_seq_len": recipe.limits.max_seq_len,
            "max_num_tokens": recipe.limits.max_num_tokens,
            "kv_cache_free_gpu_mem_fraction": recipe.serving.kv_cache_free_gpu_mem_fraction,
        },
        "steps": [
            {
                "name": s.name,
                "command": list(s.argv) if s.argv else None,
                "status": next((r.status for r in result.steps if r.name == s.name), "unknown"),
                "seconds": stamps[s.name].get("seconds"),
                "finished_at": stamps[s.name].get("finished_at"),
            }
            for s in steps
        ],
        "build_seconds": round(sum(stamps[s.name].get("seconds") or 0.0 for s in steps), 3),
        "run_started_at": started_at,
        "finished_at": _now(),
        "warnings": warnings,
        "outputs": output_checksums(out, manifest_name=CHECKPOINT_MANIFEST_NAME),
        "host": os.uname().nodename if hasattr(os, "uname") else "",
    }
    path = out / CHECKPOINT_MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_manifest(
    recipe: EngineRecipe,
    paths: BuildPaths,
    steps: list[Step],
    result: RunResult,
    gpus: list[DetectedGpu],
    started_at: str,
    warnings: list[str],
    runtime_version: str | None = None,
) -> Path:
    """Write ``engine_manifest.json`` into the engine folder and return its path."""
    engine_dir = paths.engine_dir
    if not (engine_dir / ENGINE_CONFIG_NAME).is_file():
        raise BuildError(f"{engine_dir} has no {ENGINE_CONFIG_NAME}: trtllm-build did not produce an engine")
    limits = read_engine_limits(engine_dir)
    world = recipe.parallelism.world_size
    if limits.world_size != world:
        raise BuildError(f"engine in {engine_dir} has world_size {limits.world_size}, recipe needs {world}")
    missing_ranks = [f"rank{r}.engine" for r in range(world) if not (engine_dir / f"rank{r}.engine").is_file()]
    if missing_ranks:
        raise BuildError(f"engine in {engine_dir} lacks {', '.join(missing_ranks)}")
    stamps = {s.name: (_read_stamp(paths, s) or {}) for s in steps}
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256(),
        "recipe_content": recipe.model_dump(mode="json"),
        "profile": recipe.profile,
        "checkpoint": paths.checkpoint,
        "versions": {
            "koserve": __version__,
            "tensorrt_llm_expected": recipe.trtllm_version,
            "tensorrt_llm_engine": limits.trtllm_version,
            "tensorrt_llm_runtime": runtime_version,
            "python": sys.version.split()[0],
        },
        "gpu": {
            "target": get_gpu(recipe.gpu).display_name,
            "count": len(gpus),
            "detected": [g.to_dict() for g in gpus],
        },
        "limits": {
            "max_batch_size": limits.max_batch_size,
            "max_input_len": limits.max_input_len,
            "max_seq_len": limits.max_seq_len,
            "max_num_tokens": limits.max_num_tokens,
            "tp_size": limits.tp_size,
            "pp_size": limits.pp_size,
        },
        "steps": [
            {
                "name": s.name,
                "command": list(s.argv) if s.argv else None,
                "status": next((r.status for r in result.steps if r.name == s.name), "unknown"),
                "seconds": stamps[s.name].get("seconds"),
                "finished_at": stamps[s.name].get("finished_at"),
            }
            for s in steps
        ],
        "build_seconds": round(sum(stamps[s.name].get("seconds") or 0.0 for s in steps), 3),
        "run_started_at": started_at,
        "finished_at": _now(),
        "warnings": warnings,
        "outputs": output_checksums(engine_dir),
        "host": os.uname().nodename if hasattr(os, "uname") else "",
    }
    path = engine_dir / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
