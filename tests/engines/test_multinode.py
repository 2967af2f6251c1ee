"""Multi-node: trtllm-build --gpus_per_node for multi-node recipes, the mpirun launch line (-x / --prefix), the
chart's LeaderWorkerSet and its init-container check. Launch lines are checked for properties (every variable the
ranks need is forwarded, gpus_per_node equals the GPUs of a pod), trtllm-build flags against the flags reference."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from koserve.engines.commands import BuildPaths, build_steps, validate_against_flags
from koserve.engines.mpi import forwarded_names, mpirun_head
from koserve.engines.preflight import PreflightError, check_gpus_per_node
from koserve.engines.recipe import builtin_recipe_names, load_recipe
from koserve.cli import build_parser, main
from koserve.errors import ConfigError
from koserve.server.tritonserver import gpu_command

MULTI = "akallama-70b-fp8-h100-tp2pp2-2node"
REPO = Path(__file__).resolve().parents[2]


def _build_args(recipe) -> dict[str, str]:
    argv = build_steps(recipe, BuildPaths.for_recipe(recipe, checkpoint_dir="/ckpt"))[-1].argv
    return {argv[i]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")
            and not argv[i + 1].startswith("--")}


def test_multi_node_recipe_builds_for_the_gpus_of_a_pod(trtllm_flags):
    recipe = load_recipe(MULTI)
    par = recipe.parallelism
    assert par.gpus_per_node == 2 and par.world_size == 4 and par.nodes == 2
    args = _build_args(recipe)
    assert int(args["--gpus_per_node"]) == par.gpus_per_node
    steps = build_steps(recipe, BuildPaths.for_recipe(recipe, checkpoint_dir="/ckpt"))
    assert validate_against_flags(steps, trtllm_flags) == []
    # TP inside a node: the ranks of one pipeline stage (rank = pp_rank * tp + tp_rank) share a pod
    for rank in range(par.world_size):
        assert rank // par.gpus_per_node == rank // par.tp


@pytest.mark.parametrize("name", [n for n in builtin_recipe_names()
                                  if n != MULTI and load_recipe(n).backend == "trtllm"])  # pytorch: no trtllm-build
def test_single_node_recipes_keep_the_default(name):
    assert "--gpus_per_node" not in _build_args(load_recipe(name))


@pytest.mark.parametrize("parallelism, message", [
    ({"tp": 4, "pp": 1, "gpus_per_node": 4}, "a single-node engine needs no gpus_per_node"),
    ({"tp": 2, "pp": 3, "gpus_per_node": 4}, "not a multiple of gpus_per_node 4"),
])
def test_gpus_per_node_must_split_the_world(make_recipe, parallelism, message):
    with pytest.raises(ConfigError, match=message):
        make_recipe("akallama-70b-fp8-h100-tp4", parallelism=parallelism)


def test_gpus_per_node_needs_a_why(make_recipe):
    from koserve.engines.recipe import parse_recipe

    data = load_recipe(MULTI).model_dump(mode="json")
    del data["why"]["parallelism.gpus_per_node"]
    with pytest.raises(ConfigError, match="parallelism.gpus_per_node"):
        parse_recipe(data)


def test_int4_awq_recipes_do_not_claim_the_fused_mlp(make_recipe):
    for name in builtin_recipe_names():
        r = load_recipe(name)
        if r.quantization.precision == "int4_awq" and r.backend == "trtllm":  # pytorch recipes have no build:
            assert r.build.use_fused_mlp == "disable"
            assert "forces it off" in r.why["build.use_fused_mlp"]
    with pytest.raises(ConfigError, match="turns the fused MLP off"):
        make_recipe("komt-13b-int4awq-l40s-tp1", build={"use_fused_mlp": "enable"})


def _fake_mpirun(tmp_path) -> Path:
    prefix = tmp_path / "hpcx" / "ompi"
    exe = prefix / "bin" / "mpirun"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return prefix


def _globals(cmd: list[str]) -> list[str]:
    return cmd[:cmd.index("-n")]  # mpirun's global options come before the first app context


def test_launch_line_forwards_the_environment_to_remote_ranks(tmp_path):
    prefix = _fake_mpirun(tmp_path)
    env = {"PATH": f"{prefix / 'bin'}:/usr/bin", "LD_LIBRARY_PATH": "/usr/local/tensorrt/lib", "PYTHONPATH": "/x",
           "NCCL_IB_HCA": "mlx5", "NCCL_SOCKET_IFNAME": "eth0", "UCX_TLS": "rc", "CUDA_VISIBLE_DEVICES": "0,1",
           "UNRELATED": "1"}
    cmd = gpu_command(Path("/repo"), 4, env=env)
    head = _globals(cmd)
    assert Path(head[0]).is_absolute() and Path(head[0]).parent.parent == prefix  # absolute mpirun
    assert head[head.index("--prefix") + 1] == str(prefix)
    exported = {head[i + 1] for i, tok in enumerate(head) if tok == "-x"}
    assert {"PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "NCCL_IB_HCA", "NCCL_SOCKET_IFNAME", "UCX_TLS"} <= exported
    assert "CUDA_VISIBLE_DEVICES" not in exported and "UNRELATED" not in exported
    contexts = " ".join(cmd).split(" : ")
    assert len(contexts) == 4 and all(Path(c.split()[c.split().index("-n") + 2]).is_absolute() for c in contexts)


def test_forwarded_names_cover_what_the_image_sets():
    env = dict(os.environ, NCCL_DEBUG="INFO", TRTLLM_ORCHESTRATOR="0")
    names = forwarded_names(env)
    assert names[:1] == ["PATH"] and "NCCL_DEBUG" in names and "TRTLLM_ORCHESTRATOR" in names
    assert mpirun_head("definitely-not-mpirun", env={"PATH": ""})[:2] == ["definitely-not-mpirun",
                                                                          "--allow-run-as-root"]


def test_serve_prints_the_forwarding_launch_line(tmp_path, engine_dir_for, capsys, monkeypatch):
    from koserve.fixtures import tokenizer_dir
    from koserve.repo.render import RenderOptions, render_repository

    prefix = _fake_mpirun(tmp_path)
    monkeypatch.setenv("PATH", f"{prefix / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth0")
    recipe = load_recipe(MULTI)
    engine = engine_dir_for(recipe, tmp_path / "engine")
    render_repository(RenderOptions(profile=recipe.profile, tokenizer_dir=tokenizer_dir("llama3"),
                                    out=tmp_path / "repo", engine_dir=engine))
    assert main(["serve", "--repo", str(tmp_path / "repo"), "--print-command"]) == 0
    cmd = shlex.split(capsys.readouterr().out.strip())
    head = _globals(cmd)
    assert head[0] == str(prefix / "bin" / "mpirun") and head[head.index("--prefix") + 1] == str(prefix)
    exported = {head[i + 1] for i, tok in enumerate(head) if tok == "-x"}
    assert {"PATH", "LD_LIBRARY_PATH", "NCCL_SOCKET_IFNAME"} <= exported or "LD_LIBRARY_PATH" not in os.environ
    assert cmd.count(":") == recipe.parallelism.world_size - 1


def test_engine_gpus_per_node_is_checked(tmp_path, engine_dir_for, capsys, fake_toolchain):
    recipe = load_recipe(MULTI)
    engine = engine_dir_for(recipe, tmp_path / "engine")  # trtllm-build's default mapping: 8 per node
    with pytest.raises(PreflightError, match="built with gpus_per_node 8 but each pod has 2"):
        check_gpus_per_node(engine, 2)
    cfg = json.loads((engine / "config.json").read_text())
    cfg["pretrained_config"]["mapping"]["gpus_per_node"] = 2
    (engine / "config.json").write_text(json.dumps(cfg))
    check_gpus_per_node(engine, 2)
    assert main(["build", "preflight", "--engine-dir", str(engine), "--python", sys.executable,
                 "--gpus-per-node", "2"]) == 0
    assert main(["build", "preflight", "--engine-dir", str(engine), "--python", sys.executable,
                 "--gpus-per-node", "4"]) == 2


def _preflight_argv(container) -> list[str]:
    script = container["args"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    lines = [line.strip() for line in script.splitlines() if line.strip().startswith("koserve build preflight")]
    assert len(lines) == 1, script
    return [a.replace("$ENGINE_DIR", env["ENGINE_DIR"]) for a in shlex.split(lines[0])]


def test_chart_multinode_pod_gpus_match_the_recipe_and_are_checked(helm_template, init_containers):
    """A LeaderWorkerSet for the multi-node recipe: GPUs per pod == the recipe's gpus_per_node, and the leader's init
    container checks the engine's gpus_per_node (its command parsed by koserve's own parser)."""
    recipe = load_recipe(MULTI)
    par = recipe.parallelism
    docs = helm_template(
        "values-akallama-70b-fp8-tp4.yaml",
        f"models.akallama-70b.engine.recipe={MULTI}", f"models.akallama-70b.engine.dir=engines/{MULTI}",
        f"models.akallama-70b.engine.tensorParallel={par.tp}", f"models.akallama-70b.engine.pipelineParallel={par.pp}",
        "models.akallama-70b.multiNode.enabled=true", f"models.akallama-70b.multiNode.nodes={par.nodes}",
        "models.akallama-70b.multiNode.sshSecret=koserve-ssh",
    )
    lws = [d for d in docs if d.get("kind") == "LeaderWorkerSet"]
    assert len(lws) == 1 and lws[0]["spec"]["leaderWorkerTemplate"]["size"] == par.nodes
    leader = lws[0]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    assert int(leader["resources"]["limits"]["nvidia.com/gpu"]) == par.gpus_per_node
    assert f"slots={par.gpus_per_node}" in leader["args"][0]
    inits = [c for kind, c in init_containers(docs) if kind == "LeaderWorkerSet"]
    assert len(inits) == 1
    args = build_parser().parse_args(_preflight_argv(inits[0])[1:])
    assert args.func.__name__ == "_preflight" and args.gpus_per_node == par.gpus_per_node
    assert args.engine_dir.endswith(f"engines/{MULTI}")


def test_chart_single_node_preflight_has_no_gpus_per_node(helm_template, init_containers):
    docs = helm_template("values-akallama-70b-fp8-tp4.yaml")
    (kind, container), = list(init_containers(docs))
    assert kind == "Deployment"
    assert build_parser().parse_args(_preflight_argv(container)[1:]).gpus_per_node is None
