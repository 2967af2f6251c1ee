"""TensorRT-LLM 1.2.1 command lines for a recipe.

Two stages, as in NVIDIA's engine path:

1. a TensorRT-LLM checkpoint, sharded for the recipe's TP × PP (parallelism is fixed here):
   ``examples/quantization/quantize.py`` (ModelOpt; FP8 and INT4-AWQ, with calibration) or
   ``examples/models/core/llama/convert_checkpoint.py`` (BF16 and INT8/INT4 weight-only);
2. ``trtllm-build``, one engine per rank (it has no ``--tp_size``).

A local calibration *file* first becomes a dataset folder (the internal ``calibration-data`` step),
because quantize.py only opens folders.

A recipe with ``backend: pytorch`` builds a Hugging Face checkpoint for the LLM API instead:
quantize.py ``--export_format hf`` (FP8, INT4-AWQ, NVFP4; no ``--tp_size``: the LLM API shards the
whole checkpoint at load with ``tensor_parallel_size``) into ``WORKDIR/quantized``, then the internal
``checkpoint`` step links its files and the source's tokenizer files into the output folder. BF16 is
the source checkpoint itself: only the ``checkpoint`` step runs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from koserve.engines.calibration import check_dataset_folder_name, needs_preparation
from koserve.engines.recipe import EngineRecipe, resolve_local_path
from koserve.engines.versions import CONTAINER_EXAMPLES_DIR

DEFAULT_EXAMPLES_DIR = CONTAINER_EXAMPLES_DIR  # NVIDIA's image: /app/examples
QUANTIZE_SCRIPT = "quantization/quantize.py"
CONVERT_SCRIPT = "models/core/llama/convert_checkpoint.py"

_WEIGHT_ONLY = {"int4_wo": "int4", "int8_wo": "int8"}


@dataclass(frozen=True)
class BuildPaths:
    """Where a build reads and writes."""

    workdir: Path
    checkpoint: str  # source HF checkpoint: a local folder (or a Hub id, for `commands` only)
    engine_dir: Path
    examples_dir: str = DEFAULT_EXAMPLES_DIR
    python: str = "python3"

    @property
    def trtllm_checkpoint_dir(self) -> Path:
        return self.workdir / "trtllm_checkpoint"

    @property
    def quantized_dir(self) -> Path:
        """backend pytorch: quantize.py's HF export, before the ``checkpoint`` step assembles the output."""
        return self.workdir / "quantized"

    @property
    def calibration_dir(self) -> Path:
        return self.workdir / "calibration_data"

    @property
    def logs_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @classmethod
    def for_recipe(
        cls,
        recipe: EngineRecipe,
        *,
        workdir: str | Path | None = None,
        checkpoint_dir: str | Path | None = None,
        engine_dir: str | Path | None = None,
        examples_dir: str | None = None,
        python: str = "python3",
    ) -> "BuildPaths":
        work = Path(workdir) if workdir else Path("koserve-build") / recipe.name
        ckpt = str(checkpoint_dir) if checkpoint_dir else recipe.checkpoint
        if checkpoint_dir is None and not recipe.checkpoint_is_hub_id:
            ckpt = str(resolve_local_path(recipe.checkpoint))
        return cls(
            workdir=work,
            checkpoint=ckpt,
            engine_dir=Path(engine_dir) if engine_dir else work / ("checkpoint" if recipe.builds_checkpoint else "engine"),
            examples_dir=examples_dir or DEFAULT_EXAMPLES_DIR,
            python=python,
        )


@dataclass(frozen=True)
class Step:
    """One build step: an external command (``argv``) or an internal koserve action (``argv`` None)."""

    name: str
    description: str
    argv: tuple[str, ...] | None
    inputs: tuple[Path, ...]
    outputs: tuple[Path, ...]
    gpus: int = 0  # GPUs the step needs visible
    tool: str = ""  # key in the TensorRT-LLM flags reference: quantize.py | convert_checkpoint.py | trtllm-build
    extra: dict = field(default_factory=dict, compare=False)

    def shell(self) -> str:
        """The command as one shell line."""
        if self.argv is None:
            return f"# koserve: {self.description}"
        return shlex.join(self.argv)

    def shell_multiline(self) -> str:
        """The command with one flag (and its value) per line."""
        if self.argv is None:
            return f"# koserve: {self.description}"
        head: list[str] = []
        groups: list[list[str]] = []
        for token in self.argv:
            if token.startswith("-"):
                groups.append([token])
            elif groups:
                groups[-1].append(token)
            else:
                head.append(token)
        lines = [shlex.join(head)] + ["    " + shlex.join(g) for g in groups]
        return " \\\n".join(lines)


def calibration_dataset_arg(recipe: EngineRecipe, paths: BuildPaths) -> tuple[str, Path | None]:
    """(value for --calib_dataset, local source file to prepare first or None)."""
    dataset = recipe.calibration.dataset
    local = resolve_local_path(dataset)
    if local.exists():
        if needs_preparation(local):
            return str(paths.calibration_dir), local
        check_dataset_folder_name(local)
        return str(local), None
    return dataset, None


# quantize.py --qformat for a backend-pytorch precision, and the quant_algo TensorRT-LLM's QuantAlgo names it by
# (what ModelOpt's HF export writes into hf_quant_config.json and the LLM API reads).
PYTORCH_QFORMAT = {"fp8": "fp8", "int4_awq": "int4_awq", "nvfp4": "nvfp4"}
PYTORCH_QUANT_ALGO = {"bf16": None, "fp8": "FP8", "int4_awq": "W4A16_AWQ", "nvfp4": "NVFP4"}
# Files of the source checkpoint the output gets besides the weights (the LLM API and koserve repo render read them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json")


def build_steps(recipe: EngineRecipe, paths: BuildPaths) -> list[Step]:
    """The ordered steps that turn the recipe's checkpoint into an engine in ``paths.engine_dir`` (backend pytorch:
    a HF checkpoint for the LLM API there)."""
    steps: list[Step] = []
    q, par, cal = recipe.quantization, recipe.parallelism, recipe.calibration
    ckpt_out = paths.trtllm_checkpoint_dir
    src = paths.checkpoint
    src_inputs = () if recipe.checkpoint_is_hub_id and src == recipe.checkpoint else (Path(src),)

    calib_value, calib_source = (None, None)
    if recipe.needs_calibration:
        calib_value, calib_source = calibration_dataset_arg(recipe, paths)
        if calib_source is not None:
            steps.append(Step(
                name="calibration-data",
                description=f"write {calib_source} as a dataset folder {paths.calibration_dir}/train.jsonl",
                argv=None,
                inputs=(calib_source,),
                outputs=(paths.calibration_dir,),
                extra={"source": str(calib_source)},
            ))
    calib_inputs: tuple[Path, ...] = ()
    if calib_value is not None and (Path(calib_value).exists() or calib_source is not None):
        calib_inputs = (Path(calib_value),)

    if recipe.builds_checkpoint:
        return steps + _checkpoint_steps(recipe, paths, src, src_inputs, calib_value, calib_inputs)
    if recipe.uses_quantize_py:
        argv = [
            paths.python, f"{paths.examples_dir}/{QUANTIZE_SCRIPT}",
            "--model_dir", src,
            "--dtype", "bfloat16",
            "--qformat", q.precision,
        ]
        if q.kv_cache_dtype in ("fp8", "int8"):
            argv += ["--kv_cache_dtype", q.kv_cache_dtype]
        if q.precision == "int4_awq":
            argv += ["--awq_block_size", str(q.awq_block_size)]
        argv += [
            "--calib_dataset", str(calib_value),
            "--calib_size", str(cal.size),
            "--calib_max_seq_length", str(cal.max_seq_length),
            "--batch_size", str(cal.batch_size),
            "--tp_size", str(par.tp),
            "--pp_size", str(par.pp),
            "--output_dir", str(ckpt_out),
        ]
        steps.append(Step(
            name="quantize",
            description=f"ModelOpt {q.precision} quantization (KV {q.kv_cache_dtype}) into a tp{par.tp} pp{par.pp} checkpoint",
            argv=tuple(argv), inputs=src_inputs + calib_inputs, outputs=(ckpt_out,),
            gpus=recipe.calibration_gpus, tool="quantize.py",
        ))
    else:
        argv = [
            paths.python, f"{paths.examples_dir}/{CONVERT_SCRIPT}",
            "--model_dir", src,
            "--output_dir", str(ckpt_out),
            "--dtype", "bfloat16",
            "--tp_size", str(par.tp),
            "--pp_size", str(par.pp),
            "--use_parallel_embedding",
            "--embedding_sharding_dim", "0",
        ]
        if q.precision in _WEIGHT_ONLY:
            argv += ["--use_weight_only", "--weight_only_precision", _WEIGHT_ONLY[q.precision]]
        if q.kv_cache_dtype == "int8":
            argv += ["--int8_kv_cache", "--calib_dataset", str(calib_value)]
        argv += ["--workers", str(recipe.build.workers or par.world_size)]
        steps.append(Step(
            name="convert",
            description=f"convert to a {q.precision} tp{par.tp} pp{par.pp} TensorRT-LLM checkpoint",
            argv=tuple(argv), inputs=src_inputs + calib_inputs, outputs=(ckpt_out,),
            gpus=recipe.calibration_gpus if q.kv_cache_dtype == "int8" else 0, tool="convert_checkpoint.py",
        ))

    lim, b = recipe.limits, recipe.build
    workers = b.workers or par.world_size
    argv = [
        "trtllm-build",
        "--checkpoint_dir", str(ckpt_out),
        "--output_dir", str(paths.engine_dir),
        "--max_batch_size", str(lim.max_batch_size),
        "--max_input_len", str(lim.max_input_len),
        "--max_seq_len", str(lim.max_seq_len),
        "--max_num_tokens", str(lim.max_num_tokens),
        "--max_beam_width", str(lim.max_beam_width),
        "--gemm_plugin", b.gemm_plugin,
        "--gpt_attention_plugin", b.gpt_attention_plugin,
        "--context_fmha", b.context_fmha,
        "--use_paged_context_fmha", b.use_paged_context_fmha,
        "--use_fp8_context_fmha", b.use_fp8_context_fmha,
        "--use_fused_mlp", b.use_fused_mlp,
        "--gemm_swiglu_plugin", b.gemm_swiglu_plugin,
        "--multiple_profiles", b.multiple_profiles,
        "--remove_input_padding", b.remove_input_padding,
        "--kv_cache_type", b.kv_cache_type,
        "--tokens_per_block", str(b.tokens_per_block),
        "--reduce_fusion", b.reduce_fusion,
        "--workers", str(workers),
    ]
    if par.gpus_per_node is not None:
        # The engine's mapping.gpus_per_node (build_model copies it unconditionally): rank r uses CUDA device
        # r % gpus_per_node at run time, so it must be the GPUs of one serving pod (default 8).
        argv += ["--gpus_per_node", str(par.gpus_per_node)]
    steps.append(Step(
        name="build",
        description=f"trtllm-build: {par.world_size} rank engine(s), max_batch_size {lim.max_batch_size}, "
                    f"max_seq_len {lim.max_seq_len}",
        argv=tuple(argv), inputs=(ckpt_out,), outputs=(paths.engine_dir,),
        gpus=1, tool="trtllm-build",  # ranks are built one GPU each; one GPU suffices
    ))
    return steps


def _checkpoint_steps(recipe: EngineRecipe, paths: BuildPaths, src: str, src_inputs: tuple[Path, ...],
                      calib_value: str | None, calib_inputs: tuple[Path, ...]) -> list[Step]:
    q, cal = recipe.quantization, recipe.calibration
    out = paths.engine_dir
    steps: list[Step] = []
    weights_from: tuple[Path, ...] = src_inputs
    if q.precision != "bf16":
        argv = [
            paths.python, f"{paths.examples_dir}/{QUANTIZE_SCRIPT}",
            "--model_dir", src,
            "--dtype", "bfloat16",
            "--qformat", PYTORCH_QFORMAT[q.precision],
        ]
        if q.kv_cache_dtype == "fp8":
            argv += ["--kv_cache_dtype", "fp8"]
        if q.precision == "int4_awq":
            argv += ["--awq_block_size", str(q.awq_block_size)]
        argv += [
            "--calib_dataset", str(calib_value),
            "--calib_size", str(cal.size),
            "--calib_max_seq_length", str(cal.max_seq_length),
            "--batch_size", str(cal.batch_size),
            "--export_format", "hf",
            "--output_dir", str(paths.quantized_dir),
        ]
        steps.append(Step(
            name="quantize",
            description=f"ModelOpt {q.precision} quantization (KV {q.kv_cache_dtype}) exported as a Hugging Face "
                        "checkpoint for the LLM API",
            argv=tuple(argv), inputs=src_inputs + calib_inputs, outputs=(paths.quantized_dir,),
            gpus=recipe.calibration_gpus, tool="quantize.py",
        ))
        weights_from = (paths.quantized_dir,)
    steps.append(Step(
        name="checkpoint",
        description=f"assemble {out}: the {'quantized' if q.precision != 'bf16' else 'BF16 source'} weights and "
                    "the source's tokenizer files (hard links where the filesystem allows)",
        argv=None,
        inputs=tuple(dict.fromkeys(weights_from + src_inputs)),
        outputs=(out,),
        extra={"weights": str(weights_from[0]) if weights_from else src, "source": src},
    ))
    return steps


def validate_against_flags(steps: list[Step], flags: dict) -> list[str]:
    """Problems with the steps' argv against a flags reference (``trtllm-1.2-cli-flags.json`` shape):
    unknown flags, values outside ``choices``, missing or extra values. Empty when all is well."""
    problems: list[str] = []
    for step in steps:
        if step.argv is None:
            continue
        spec = flags.get(step.tool)
        if spec is None:
            problems.append(f"{step.name}: no flags reference for {step.tool!r}")
            continue
        start = 1 if step.tool == "trtllm-build" else 2
        args = list(step.argv[start:])
        seen: set[str] = set()
        i = 0
        while i < len(args):
            flag = args[i]
            if flag not in spec:
                problems.append(f"{step.name}: {step.tool} has no flag {flag}")
                i += 1
                continue
            if flag in seen:
                problems.append(f"{step.name}: {flag} given twice")
            seen.add(flag)
            info = spec[flag]
            if info.get("takes_value"):
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    problems.append(f"{step.name}: {flag} needs a value")
                    i += 1
                    continue
                value = args[i + 1]
                choices = info.get("choices")
                if choices is not None and value not in [str(c) for c in choices]:
                    problems.append(f"{step.name}: {flag} {value!r} not in {choices}")
                i += 2
            else:
                i += 1
    return problems
