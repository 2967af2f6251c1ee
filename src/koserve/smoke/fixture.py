"""The checkpoint of the GPU acceptance run: ``tiny-llama3-gpu``, the Llama-3-vocabulary tiny random-weight model of
``koserve setup fixtures`` in a shape TensorRT-LLM's kernels take.

The CPU fixture (hidden 64, 4 heads) has head size 16; TensorRT-LLM's fused attention kernels are built for head sizes
such as 64 and 128, so this variant has hidden 256 over 4 query heads (head size 64) and 2 KV heads (GQA like
Llama-3). It is a separate folder so the CPU tests' checkpoint stays as it is.
"""

from __future__ import annotations

from pathlib import Path

from koserve.errors import ConfigError
from koserve.fixtures import build_tiny_model, cache_dir

GPU_FIXTURE = "tiny-llama3-gpu"
GPU_SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
HEAD_SIZES_SUPPORTED = (64, 128)


def head_size(config: dict) -> int:
    heads = int(config["num_attention_heads"])
    return int(config.get("head_dim") or int(config["hidden_size"]) // heads)


def gpu_fixture_dir() -> Path:
    return cache_dir() / "models" / GPU_FIXTURE


def prepare_gpu_fixture(force: bool = False, log=print) -> Path:
    """Build (once) the GPU checkpoint; needs torch + transformers and the llama3 tokenizer fixture."""
    dest = gpu_fixture_dir()
    if force or not (dest / "config.json").is_file() or not (dest / "tokenizer.json").is_file():
        log(f"building the {GPU_FIXTURE} checkpoint (random weights, head size {GPU_SHAPE['hidden_size'] // 4}) ...")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            build_tiny_model("llama3", dest, shape=GPU_SHAPE)
        except ImportError as exc:
            raise ConfigError(f"building {GPU_FIXTURE} needs torch and transformers ({exc}); or pass --checkpoint") from None
    return dest
