"""`koserve build`: plan, print and run TensorRT-LLM engine builds (backend pytorch: HF checkpoints) from recipes."""

from __future__ import annotations

import json
import os
from pathlib import Path


def _scenarios(args) -> list[tuple[int, int]]:
    from koserve.engines.planner import DEFAULT_SCENARIOS

    if args.isl is None and args.osl is None:
        return list(DEFAULT_SCENARIOS)
    if args.isl is None or args.osl is None:
        from koserve.errors import ConfigError

        raise ConfigError("give both --isl and --osl")
    return [(args.isl, args.osl)]


def _paths(args, recipe):
    from koserve.engines.commands import BuildPaths

    return BuildPaths.for_recipe(
        recipe,
        workdir=args.workdir,
        checkpoint_dir=args.checkpoint_dir,
        engine_dir=args.output_dir,
        examples_dir=args.trtllm_examples or os.environ.get("TRTLLM_EXAMPLES"),
        python=args.python,
    )


def _plan(args) -> int:
    from koserve.engines.planner import format_plan, plan
    from koserve.engines.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    p = plan(recipe, _scenarios(args), min_concurrency=args.min_concurrency)
    print(p.to_json() if args.json else format_plan(p))
    return 0 if p.ok else 1


def _list(args) -> int:
    from koserve.engines.gpus import get_gpu
    from koserve.engines.recipe import builtin_recipe_names, load_recipe

    for name in builtin_recipe_names():
        r = load_recipe(name)
        print(f"{name:36s} {r.profile:13s} {r.backend:8s} {r.quantization.precision:8s} "
              f"{r.parallelism.world_size} × {get_gpu(r.gpu).display_name}")
    return 0


def _gpus(args) -> int:
    from koserve.engines.gpus import format_catalogue

    print(format_catalogue())
    return 0


def _new(args) -> int:
    from koserve.engines.recipe import write_recipe_copy

    path = write_recipe_copy(args.source, args.name, Path(args.out), force=args.force)
    print(f"wrote {path} (a copy of {args.source}); edit it, then: koserve build plan {path}")
    return 0


def _commands(args) -> int:
    from koserve.engines.commands import build_steps
    from koserve.engines.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    steps = build_steps(recipe, _paths(args, recipe))
    if args.json:
        print(json.dumps([
            {"step": s.name, "description": s.description, "argv": list(s.argv) if s.argv else None, "gpus": s.gpus}
            for s in steps
        ], indent=2, ensure_ascii=False))
        return 0
    print(f"# {recipe.name}: TensorRT-LLM {recipe.trtllm_version}")
    for i, step in enumerate(steps, 1):
        print(f"\n# {i}. {step.name}: {step.description} (GPUs: {step.gpus})")
        print(step.shell_multiline())
    return 0


def _run(args) -> int:
    from koserve.engines.recipe import load_recipe
    from koserve.engines.runner import run_build

    recipe = load_recipe(args.recipe)
    paths = _paths(args, recipe)
    run_build(
        recipe, paths, dry_run=args.dry_run, force=args.force,
        echo=lambda line: print(line, flush=True),
        heartbeat_seconds=args.heartbeat, step_timeout=args.step_timeout,
    )
    return 0


def _preflight(args) -> int:
    from koserve.engines.preflight import preflight_engine

    expected, source = args.expect, "expected (--expect)"
    if args.recipe:
        from koserve.engines.recipe import load_recipe

        expected, source = load_recipe(args.recipe).trtllm_version, f"recipe {args.recipe} trtllm_version"
    check = preflight_engine(args.engine_dir, python=args.python, expected=expected, expected_from=source,
                             what=f"preflight {args.engine_dir}")
    print(f"koserve: TensorRT-LLM versions agree: {check.summary()}")
    if args.gpus_per_node is not None:
        from koserve.engines.preflight import check_gpus_per_node

        check_gpus_per_node(args.engine_dir, args.gpus_per_node)
        print(f"koserve: engine built for {args.gpus_per_node} GPU(s) per node")
    return 0


def _common(p, *, paths: bool) -> None:
    p.add_argument("recipe", help="built-in recipe name (see `koserve build list`) or a recipe YAML file")
    if paths:
        p.add_argument("--workdir", metavar="DIR", help="build folder (default: ./koserve-build/RECIPE)")
        p.add_argument("--checkpoint-dir", metavar="DIR",
                       help="local Hugging Face checkpoint folder (overrides the recipe)")
        p.add_argument("--output-dir", metavar="DIR",
                       help="engine folder (default: WORKDIR/engine); backend pytorch: the HF checkpoint folder "
                       "(default: WORKDIR/checkpoint)")
        p.add_argument("--trtllm-examples", metavar="DIR",
                       help="TensorRT-LLM v1.2.1 examples/ folder (default: $TRTLLM_EXAMPLES or /app/examples, "
                       "where NVIDIA's image has them)")
        p.add_argument("--python", default="python3", help="interpreter for quantize.py / convert_checkpoint.py")


def register(subparsers) -> None:
    from koserve.cli.conventions import add_time

    build = subparsers.add_parser(
        "build", help="plan and build TensorRT-LLM engines from recipes",
        description="Engine recipes: `list` the built-in ones, `gpus` the GPU keys they take, `new` to copy one to "
        "edit, `plan` before any GPU work, `commands` to see what runs, `run` on the GPU box. Guide: docs/build.md.",
    )
    sub = build.add_subparsers(dest="build_command", required=True)

    p = sub.add_parser("list", help="list the built-in recipes")
    p.set_defaults(func=_list)

    p = sub.add_parser("gpus", help="list the GPU catalogue: the keys a recipe's gpu: and --gpu take")
    p.set_defaults(func=_gpus)

    p = sub.add_parser(
        "new", help="write a copy of a recipe under a new name, to edit",
        description="Copy RECIPE (built-in name or file) to OUT/NAME.yaml with name: NAME, comments kept, and check "
        "that the copy loads. Edit it, then `koserve build plan OUT/NAME.yaml`.",
        epilog="example: koserve build new --from akallama-70b-fp8-h200-tp1 akallama-70b-bf16-h200-tp2",
    )
    p.add_argument("--from", dest="source", required=True, metavar="RECIPE",
                   help="the recipe to copy: a built-in name (see `koserve build list`) or a YAML file")
    p.add_argument("name", metavar="NAME", help="name of the new recipe (also its file name, NAME.yaml)")
    p.add_argument("--out", default=".", metavar="DIR", help="folder to write NAME.yaml into")
    p.add_argument("--force", action="store_true", help="replace OUT/NAME.yaml if it exists")
    p.set_defaults(func=_new)

    p = sub.add_parser("plan", help="memory, KV-cache capacity, concurrency and refusals, before any GPU work")
    _common(p, paths=False)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--isl", type=int, metavar="N",
                   help="input sequence length of the traffic scenario planned for, with --osl (default: the "
                   "scenarios 128/128 and 2048/2048)")
    p.add_argument("--osl", type=int, metavar="N", help="output sequence length of the scenario, with --isl")
    p.add_argument("--min-concurrency", type=int, default=32, metavar="N",
                   help="sequences the KV cache must hold at once for a scenario to be 'ok'")
    p.set_defaults(func=_plan)

    p = sub.add_parser("commands", help="print the exact TensorRT-LLM 1.2.1 command lines")
    _common(p, paths=True)
    p.add_argument("--json", action="store_true", help="print JSON (argv lists)")
    p.set_defaults(func=_commands)

    p = sub.add_parser("run", help="run the build (resumable; logs per step; writes engine_manifest.json)")
    _common(p, paths=True)
    p.add_argument("--dry-run", action="store_true", help="show what would run or be skipped, run nothing")
    p.add_argument("--force", action="store_true", help="re-run every step even when up to date")
    add_time(p, "--heartbeat", default="1m", help="time between progress lines of a running step")
    add_time(p, "--step-timeout", default=None, help="kill a step that runs longer than this (default: no limit)")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "preflight",
        help="check that tensorrt_llm.__version__, the engine's config.json version and the recipe agree",
        description="Compare the TensorRT-LLM that PYTHON imports, the version in ENGINE_DIR/config.json and the "
        "expected release (--recipe's trtllm_version, else --expect, else engine_manifest.json, else koserve's "
        "pinned 1.2.1). Exit 0 when all agree; otherwise exit 2 with an error naming all three. The chart's init "
        "container runs it before rendering the repository.",
    )
    p.add_argument("--engine-dir", required=True, metavar="DIR",
                   help="TensorRT-LLM engine folder (config.json + rank*.engine)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--recipe", help="built-in recipe name or YAML: expect its trtllm_version")
    g.add_argument("--expect", help="expected TensorRT-LLM version, e.g. 1.2.1")
    p.add_argument("--python", default="python3", help="interpreter whose tensorrt_llm is checked")
    p.add_argument("--gpus-per-node", type=int, default=None, metavar="N",
                   help="multi-node: GPUs per pod; the engine's mapping.gpus_per_node must equal it")
    p.set_defaults(func=_preflight)
