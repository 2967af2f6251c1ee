"""Engine builds: recipes, capacity planner, TensorRT-LLM 1.2.1 command lines, resumable runner, manifest.

A recipe with ``backend: pytorch`` builds a Hugging Face checkpoint for the LLM API instead of an engine.
"""

from koserve.engines.commands import BuildPaths, Step, build_steps, validate_against_flags
from koserve.engines.gpus import GPUS, GpuSpec, get_gpu, match_gpu_name
from koserve.engines.manifest import EngineLimits, read_engine_limits, read_manifest, verify_manifest
from koserve.engines.planner import BuildPlan, Scenario, format_plan, plan
from koserve.engines.recipe import EngineRecipe, builtin_recipe_names, load_recipe, parse_recipe
from koserve.engines.runner import BuildError, run_build

__all__ = [
    "BuildError",
    "BuildPaths",
    "BuildPlan",
    "EngineLimits",
    "EngineRecipe",
    "GPUS",
    "GpuSpec",
    "Scenario",
    "Step",
    "build_steps",
    "builtin_recipe_names",
    "format_plan",
    "get_gpu",
    "load_recipe",
    "match_gpu_name",
    "parse_recipe",
    "plan",
    "read_engine_limits",
    "read_manifest",
    "run_build",
    "validate_against_flags",
    "verify_manifest",
]
