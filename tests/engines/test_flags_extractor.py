"""scripts/extract_trtllm_flags.py reads argparse definitions with ast at a git commit (a small TensorRT-LLM-shaped
tree of our own here: the real one is not reachable from this machine)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "extract_trtllm_flags.py"

BUILD = '''
import argparse
LEVELS = {"info": 1, "debug": 2}
def parse_arguments():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint_dir", type=str, default=None)
    parser.add_argument("--max_seq_len", "--max_decoder_seq_len", dest="max_seq_len", type=int)
    parser.add_argument("--strip_plan", action="store_true")
    parser.add_argument("--log_level", default="info", choices=LEVELS.keys())
    group = parser.add_argument_group("x")
    group.add_argument("--gpus_per_node", type=int, default=8)
    group.add_argument("--profiling_verbosity", choices=["layer_names_only", "detailed", "none"])
    group.add_argument("--lora_target_modules", nargs="+", choices=unknown_call())
    add_plugin_argument(parser)
    return parser
'''
PLUGIN = '''
from dataclasses import dataclass, field
@dataclass
class PluginConfig:
    gemm_plugin: str = "auto"
    context_fmha: bool = True
    tokens_per_block: int = 32
    gemm_swiglu_plugin: str = field(default=None, metadata={"choices": ["fp8"]})
    hidden: str = None
cli_plugin_args = ["gemm_plugin", "context_fmha", "tokens_per_block", "gemm_swiglu_plugin"]
plugin_options = ["auto", "float16", "bfloat16", "disable"]
'''
QUANT = 'import argparse\np = argparse.ArgumentParser()\np.add_argument("--qformat", choices=("fp8", "int4_awq"))\n'


def _load():
    spec = importlib.util.spec_from_file_location("extract_trtllm_flags", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _git(tree: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def test_extracts_flags_at_a_commit(tmp_path):
    tree = tmp_path / "TensorRT-LLM"
    files = {"tensorrt_llm/commands/build.py": BUILD, "tensorrt_llm/plugin/plugin.py": PLUGIN,
             "examples/quantization/quantize.py": QUANT, "examples/llama/convert_checkpoint.py": QUANT}
    for path, text in files.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_text(text)
    _git(tree, "init", "-q")
    _git(tree, "add", ".")
    _git(tree, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "v")
    _git(tree, "tag", "v1.2.1")
    (tree / "examples/quantization/quantize.py").write_text(QUANT.replace("fp8", "nvfp4"))  # not at the tag
    proc = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(tree), "--commit", "v1.2.1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["_sources"]["commit"] == _git(tree, "rev-parse", "HEAD")
    assert data["_sources"]["convert_checkpoint.py"] == "examples/llama/convert_checkpoint.py"  # the older path
    b = data["trtllm-build"]
    assert b["--max_seq_len"] == b["--max_decoder_seq_len"] and b["--max_seq_len"]["takes_value"]
    assert b["--strip_plan"] == {"takes_value": False, "choices": None}
    assert b["--log_level"]["choices"] == ["info", "debug"]
    assert b["--gpus_per_node"] == {"takes_value": True, "choices": None}
    assert b["--profiling_verbosity"]["choices"] == ["layer_names_only", "detailed", "none"]
    assert b["--lora_target_modules"]["choices"] is None and "unknown_call" in b["--lora_target_modules"]["choices_expr"]
    assert b["--gemm_plugin"]["choices"] == ["auto", "float16", "bfloat16", "disable"]
    assert b["--context_fmha"]["choices"] == ["enable", "disable"]
    assert b["--tokens_per_block"] == {"takes_value": True, "choices": None}
    assert b["--gemm_swiglu_plugin"]["choices"] == ["fp8"] and "--hidden" not in b
    assert data["quantize.py"]["--qformat"]["choices"] == ["fp8", "int4_awq"]  # the tagged version, not the tree


def test_work_tree_and_missing_tool(tmp_path):
    mod = _load()
    tree = tmp_path / "t"
    (tree / "examples/quantization").mkdir(parents=True)
    (tree / "examples/quantization/quantize.py").write_text(QUANT)
    try:
        mod.extract(mod.SourceTree(tree, None))
    except SystemExit as exc:
        assert "convert_checkpoint.py" in str(exc)
    else:
        raise AssertionError("a missing tool must stop the extraction")
