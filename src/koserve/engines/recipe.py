"""Engine build recipes: one validated YAML file per deployable TensorRT-LLM engine.

A recipe fixes everything a build needs (profile, checkpoint, precision, parallelism, GPU,
engine limits, trtllm-build plugin choices, calibration) and says *why* for each choice in
its ``why`` map (dotted field path -> one line). Validation refuses unknown keys, choices
TensorRT-LLM 1.2 does not accept and undocumented choices; a field left at its default
needs no why.

``backend`` picks what the build produces: ``trtllm`` (default) a TensorRT engine (quantize.py /
convert_checkpoint.py, then trtllm-build), ``pytorch`` a Hugging Face checkpoint for the LLM API
(quantize.py ``--export_format hf``; BF16 is the source checkpoint copied as is).
"""

from __future__ import annotations

import hashlib
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from koserve.errors import ConfigError, validation_error_message
from koserve.profiles import ModelProfile, load_profile

Precision = Literal["bf16", "fp8", "int4_awq", "int4_wo", "int8_wo", "nvfp4"]
Backend = Literal["trtllm", "pytorch"]
KvCacheDtype = Literal["fp8", "int8", "bf16"]
EnableDisable = Literal["enable", "disable"]

# Precisions whose checkpoint comes from ModelOpt's quantize.py (they need calibration data).
CALIBRATED_PRECISIONS = ("fp8", "int4_awq", "nvfp4")
# What backend pytorch builds: a HF checkpoint the LLM API loads (quantize.py --export_format hf, or BF16 as is).
PYTORCH_PRECISIONS = ("bf16", "fp8", "int4_awq", "nvfp4")
# TensorRT-LLM's model support matrix (docs/source/features/quantization.md@09d4c79b, read here; the v1.2.1 tag's
# copy could not be read): the W4A16 AWQ column is marked for "LLaMA" and "LLaMA-v2" but not for "LLaMA 3".
PYTORCH_INT4_AWQ_FAMILIES = ("llama2",)
# Precisions converted by the Llama convert_checkpoint.py.
CONVERTED_PRECISIONS = ("bf16", "int4_wo", "int8_wo")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Parallelism(_Strict):
    tp: int = Field(default=1, ge=1, le=64)
    pp: int = Field(default=1, ge=1, le=64)
    # GPUs per node (Kubernetes: per pod) of a multi-node deployment; trtllm-build --gpus_per_node. A rank uses
    # CUDA device rank % gpus_per_node (the engine's mapping), and trtllm-build's default is 8: a multi-node engine
    # for 2- or 4-GPU pods must say so. None: single node.
    gpus_per_node: int | None = Field(default=None, ge=1, le=64)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def nodes(self) -> int:
        return 1 if self.gpus_per_node is None else -(-self.world_size // self.gpus_per_node)

    @model_validator(mode="after")
    def _whole_nodes(self) -> "Parallelism":
        g = self.gpus_per_node
        if g is not None:
            if g >= self.world_size:
                raise ValueError(f"gpus_per_node {g} >= world size {self.world_size}: a single-node engine needs no "
                                 "gpus_per_node (leave it out)")
            if self.world_size % g:
                raise ValueError(f"world size {self.world_size} (tp {self.tp} x pp {self.pp}) is not a multiple of "
                                 f"gpus_per_node {g}")
        return self


class Quantization(_Strict):
    precision: Precision
    kv_cache_dtype: KvCacheDtype
    awq_block_size: int = Field(default=128, gt=0)

    @model_validator(mode="after")
    def _kv_fits_path(self) -> "Quantization":
        if self.awq_block_size not in (64, 128):
            raise ValueError(f"awq_block_size must be 64 or 128, got {self.awq_block_size}")
        return self


class Calibration(_Strict):
    """Calibration data for quantize.py (and for int8 KV cache via convert_checkpoint.py).

    ``dataset``: a local folder (``datasets.load_dataset(dir, split="train")`` with a ``text``
    column, e.g. a ``train.jsonl``), a local text/JSONL file (koserve turns it into such a
    folder), or a Hub dataset name (``cnn_dailymail``, ModelOpt's English default). Relative
    paths are relative to the repository root.
    """

    dataset: str = "cnn_dailymail"
    size: int = Field(default=512, gt=0)
    max_seq_length: int = Field(default=512, gt=0)
    batch_size: int = Field(default=1, gt=0)
    # GPUs visible to quantize.py: it loads the whole BF16 model with device_map=auto.
    num_gpus: int | None = Field(default=None, ge=1)


class Limits(_Strict):
    max_batch_size: int = Field(gt=0)
    max_input_len: int = Field(gt=0)
    max_seq_len: int = Field(gt=1)
    max_num_tokens: int = Field(default=8192, gt=0)
    max_beam_width: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "Limits":
        if self.max_input_len >= self.max_seq_len:
            raise ValueError(
                f"max_input_len ({self.max_input_len}) must be below max_seq_len ({self.max_seq_len}): "
                "max_seq_len counts prompt and output tokens"
            )
        return self


class BuildOptions(_Strict):
    """trtllm-build plugin and kernel choices (values exactly as trtllm-build 1.2 takes them)."""

    gemm_plugin: Literal["auto", "disable", "bfloat16", "float16", "fp8"] = "auto"
    gpt_attention_plugin: Literal["auto", "bfloat16", "float16", "disable"] = "auto"
    context_fmha: EnableDisable = "enable"
    use_paged_context_fmha: EnableDisable = "enable"
    use_fp8_context_fmha: EnableDisable = "disable"
    use_fused_mlp: EnableDisable = "enable"
    gemm_swiglu_plugin: Literal["disable", "fp8"] = "disable"
    multiple_profiles: EnableDisable = "enable"
    remove_input_padding: EnableDisable = "enable"
    kv_cache_type: Literal["paged", "continuous"] = "paged"
    tokens_per_block: int = Field(default=32, gt=0)
    reduce_fusion: EnableDisable = "disable"
    workers: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> "BuildOptions":
        if self.use_fp8_context_fmha == "enable" and self.use_paged_context_fmha != "enable":
            raise ValueError("use_fp8_context_fmha enable requires use_paged_context_fmha enable")
        if self.use_paged_context_fmha == "enable" and self.kv_cache_type != "paged":
            raise ValueError("use_paged_context_fmha enable requires kv_cache_type paged")
        if self.tokens_per_block & (self.tokens_per_block - 1):
            raise ValueError(f"tokens_per_block must be a power of two, got {self.tokens_per_block}")
        return self


class Serving(_Strict):
    """Runtime settings the planner assumes (the serving config must use the same)."""

    kv_cache_free_gpu_mem_fraction: float = Field(default=0.9, gt=0.0, le=1.0)


NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"

# Choices that must carry a one-line why (dotted paths into the recipe) unless left at their default.
REQUIRED_WHY = (
    "checkpoint", "gpu", "parallelism.tp", "parallelism.pp", "quantization.precision",
    "quantization.kv_cache_dtype", "limits.max_batch_size", "limits.max_input_len", "limits.max_seq_len",
    "limits.max_num_tokens", "build.gemm_plugin", "build.use_paged_context_fmha",
    "build.use_fp8_context_fmha", "build.use_fused_mlp", "build.gemm_swiglu_plugin",
    "build.multiple_profiles", "serving.kv_cache_free_gpu_mem_fraction",
)


class EngineRecipe(_Strict):
    """One deployable engine build."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    backend: Backend = "trtllm"
    profile: str
    checkpoint: str  # a Hugging Face id (org/name) or a local folder
    trtllm_version: str = "1.2.1"
    gpu: str
    parallelism: Parallelism = Parallelism()
    quantization: Quantization
    calibration: Calibration = Calibration()
    limits: Limits
    build: BuildOptions = BuildOptions()
    serving: Serving = Serving()
    why: dict[str, str] = Field(default_factory=dict)

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, value: str) -> str:
        from koserve.engines.gpus import GPUS

        if value not in GPUS:
            raise ValueError(f"unknown GPU {value!r}; known: {', '.join(GPUS)} (`koserve build gpus` describes them)")
        return value

    @field_validator("why")
    @classmethod
    def _one_line_whys(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            if not text or not text.strip():
                raise ValueError(f"why[{key!r}] is empty")
            if "\n" in text.strip():
                raise ValueError(f"why[{key!r}] must be one line")
        return value

    @model_validator(mode="after")
    def _whys_cover_choices(self) -> "EngineRecipe":
        known = _field_paths(self)
        unknown = sorted(k for k in self.why if k not in known)
        if unknown:
            raise ValueError(f"why names fields the recipe does not have: {', '.join(unknown)}")
        required = list(REQUIRED_WHY)
        if self.backend == "pytorch":
            required = [k for k in required if not k.startswith("build.")] + ["backend"]
        if self.quantization.precision in CALIBRATED_PRECISIONS:
            required += ["calibration.dataset", "calibration.size", "calibration.num_gpus"]
        if self.parallelism.gpus_per_node is not None:
            required.append("parallelism.gpus_per_node")
        missing = [k for k in required if k not in self.why and not _at_default(self, k)]
        if missing:
            raise ValueError(f"every choice that differs from the default needs a one-line why; missing: "
                             f"{', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _choices_fit_backend(self) -> "EngineRecipe":
        q = self.quantization
        if self.backend == "trtllm":
            if q.precision in CONVERTED_PRECISIONS and q.kv_cache_dtype == "fp8":
                raise ValueError(
                    f"kv_cache_dtype fp8 needs ModelOpt's quantize.py (precision fp8 or int4_awq); precision "
                    f"{q.precision} goes through convert_checkpoint.py, which offers int8 or bf16 KV cache"
                )
            if q.precision == "nvfp4":
                raise ValueError("precision nvfp4 is built for backend pytorch (a HF checkpoint the LLM API loads); "
                                 "set backend: pytorch")
            return self
        if q.precision not in PYTORCH_PRECISIONS:
            raise ValueError(f"backend pytorch takes precision {', '.join(PYTORCH_PRECISIONS)} (quantize.py "
                             f"--export_format hf); {q.precision} is a TensorRT-engine (backend trtllm) format")
        if q.kv_cache_dtype == "int8":
            raise ValueError("backend pytorch: kv_cache_dtype int8 is not offered (fp8 or bf16)")
        if q.precision == "bf16" and q.kv_cache_dtype != "bf16":
            raise ValueError("backend pytorch with precision bf16 serves the source checkpoint as is: kv_cache_dtype "
                             "must be bf16 (an FP8 KV cache needs quantize.py's calibrated KV scales: use fp8)")
        if self.build != BuildOptions():
            raise ValueError("backend pytorch builds no TensorRT engine: remove the build: section (trtllm-build "
                             "options)")
        return self

    @model_validator(mode="after")
    def _choices_fit_precision(self) -> "EngineRecipe":
        q, b = self.quantization, self.build
        if self.backend == "pytorch":  # no trtllm-build: the build options stay at their defaults, unused
            return self
        if b.use_fp8_context_fmha == "enable" and q.precision != "fp8":
            raise ValueError("build.use_fp8_context_fmha enable needs quantization.precision fp8")
        if b.gemm_swiglu_plugin == "fp8" and q.precision != "fp8":
            raise ValueError("build.gemm_swiglu_plugin fp8 needs quantization.precision fp8")
        if b.gemm_swiglu_plugin == "fp8" and b.use_fused_mlp != "enable":
            raise ValueError("build.gemm_swiglu_plugin fp8 needs build.use_fused_mlp enable")
        if b.use_fused_mlp == "enable" and q.precision not in ("bf16", "fp8"):
            # tensorrt_llm/commands/build.py main(): any quant_algo other than FP8 / MIXED_PRECISION sets
            # use_fused_mlp False, so the recipe would claim a fusion the engine does not have.
            raise ValueError(
                f"build.use_fused_mlp enable with precision {q.precision}: trtllm-build turns the fused MLP off for "
                "every quantization except FP8 (and mixed precision); set build.use_fused_mlp disable"
            )
        if b.gemm_plugin == "fp8" and q.precision != "fp8":
            raise ValueError("build.gemm_plugin fp8 needs quantization.precision fp8")
        return self

    # -- derived -----------------------------------------------------------------------------
    @cached_property
    def model_profile(self) -> ModelProfile:
        return load_profile(self.profile)

    @property
    def needs_calibration(self) -> bool:
        return self.quantization.precision in CALIBRATED_PRECISIONS or self.quantization.kv_cache_dtype == "int8"

    @property
    def uses_quantize_py(self) -> bool:
        return self.quantization.precision in CALIBRATED_PRECISIONS

    @property
    def builds_checkpoint(self) -> bool:
        """True for backend pytorch: the build's output is a HF checkpoint for the LLM API, not an engine."""
        return self.backend == "pytorch"

    @property
    def calibration_gpus(self) -> int:
        return self.calibration.num_gpus or self.parallelism.world_size

    @property
    def checkpoint_is_hub_id(self) -> bool:
        return _looks_like_hub_id(self.checkpoint)

    def canonical_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True, allow_unicode=True)

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_yaml().encode("utf-8")).hexdigest()


def _field_paths(recipe: EngineRecipe) -> set[str]:
    paths: set[str] = set()
    for name, value in recipe:
        if name == "why":
            continue
        paths.add(name)
        if isinstance(value, BaseModel):
            paths.update(f"{name}.{sub}" for sub in type(value).model_fields)
    return paths


def _at_default(recipe: BaseModel, path: str) -> bool:
    """Whether the field at dotted ``path`` has a default and holds it (such a field needs no why)."""
    *parents, leaf = path.split(".")
    model = recipe
    for part in parents:
        model = getattr(model, part)
    info = type(model).model_fields[leaf]
    if info.is_required():
        return False
    return getattr(model, leaf) == info.get_default(call_default_factory=True)


def _looks_like_hub_id(text: str) -> bool:
    if text.startswith((".", "/", "~")) or Path(text).expanduser().exists():
        return False
    parts = text.split("/")
    return len(parts) == 2 and all(parts)


# -- finding and loading -------------------------------------------------------------------------

# In a checkout a symlink to the top-level recipes/; the wheel carries a copy.
_PACKAGED_RECIPES = Path(__file__).resolve().parent / "recipes"


def repo_root() -> Path | None:
    """The koserve checkout this module runs from (``<root>/src/koserve/engines``, ``<root>/recipes``), if any.

    Only that exact layout: an installed koserve whose venv happens to sit inside a checkout is not one."""
    root = Path(__file__).resolve().parents[3]
    if (root / "recipes").is_dir() and (root / "pyproject.toml").is_file() and (root / "src" / "koserve").is_dir():
        return root
    return None


def recipes_dir() -> Path:
    """Where built-in recipes live: ``$KOSERVE_RECIPES_DIR``, else the checkout's ``recipes``, else the copy the
    wheel ships (``koserve/engines/recipes``)."""
    env = os.environ.get("KOSERVE_RECIPES_DIR")
    if env:
        return Path(env)
    root = repo_root()
    if root is not None:
        return root / "recipes"
    if _PACKAGED_RECIPES.is_dir():
        return _PACKAGED_RECIPES
    return Path.cwd() / "recipes"


def builtin_recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def parse_recipe(data: object, source: str = "<recipe>") -> EngineRecipe:
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {source} must be a mapping, got {type(data).__name__}")
    try:
        recipe = EngineRecipe.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_error_message(f"recipe {source}", exc)) from None
    try:
        recipe.model_profile
    except ConfigError as exc:
        raise ConfigError(f"recipe {source}: {exc}") from None
    return recipe


def recipe_path(name_or_path: str | Path) -> Path:
    """The YAML file of a built-in recipe name or a recipe path."""
    text = str(name_or_path)
    builtin = recipes_dir() / f"{text}.yaml"
    if "/" not in text and not text.endswith((".yaml", ".yml")) and builtin.is_file():
        return builtin
    path = Path(text).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"unknown recipe {text!r}: not a built-in ({', '.join(builtin_recipe_names()) or 'none found'}; "
            "`koserve build list`) and no such file"
        )
    return path


def load_recipe(name_or_path: str | Path | EngineRecipe) -> EngineRecipe:
    """Load a built-in recipe by name (``akallama-70b-fp8-h100-tp4``) or a recipe YAML file by path."""
    if isinstance(name_or_path, EngineRecipe):
        return name_or_path
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    recipe = parse_recipe(data, str(path))
    if recipe.name != path.stem:
        raise ConfigError(f"recipe {path}: name {recipe.name!r} must match the file name {path.stem!r} "
                          f"(rename the file to {recipe.name}.yaml or set name: {path.stem})")
    return recipe


def write_recipe_copy(source: str | Path, name: str, out_dir: Path, *, force: bool = False) -> Path:
    """Write ``out_dir/NAME.yaml``: a copy of recipe ``source`` (its comments kept) renamed to ``name``, checked by
    loading it. The starting point of a custom recipe."""
    if not re.match(NAME_PATTERN, name):
        raise ConfigError(f"recipe name {name!r}: use lower-case letters, digits, '.', '_' and '-', starting with a "
                          "letter or digit (it is also the file name)")
    original = load_recipe(source)
    text = recipe_path(source).read_text(encoding="utf-8")
    text, renamed = re.subn(r"(?m)^name:.*$", f"name: {name}", text, count=1)
    if not renamed:  # a recipe written without a top-level name line: say it in YAML's own terms
        text = f"name: {name}\n{text}"
    header = (f"# A copy of the recipe {original.name} (`koserve build new`). Edit it, then check it with\n"
              f"#   koserve build plan {out_dir / (name + '.yaml')}\n"
              "# Fields left at their default need no why; `koserve build gpus` lists the gpu keys.\n")
    dest = out_dir / f"{name}.yaml"
    if dest.exists() and not force:
        raise ConfigError(f"{dest} exists; choose another NAME, another --out, or give --force")
    out_dir.mkdir(parents=True, exist_ok=True)
    dest.write_text(header + text, encoding="utf-8")
    load_recipe(dest)
    return dest


def resolve_local_path(text: str) -> Path:
    """A path from a recipe: absolute, ``~``, or relative to the repository root (else the cwd)."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    root = repo_root()
    if root is not None and (root / path).exists():
        return root / path
    if path.parts[:1] == ("recipes",) and (_PACKAGED_RECIPES.parent / path).exists():  # installed from a wheel
        return _PACKAGED_RECIPES.parent / path
    return Path.cwd() / path
