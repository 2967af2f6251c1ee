"""The checkpoint of the GPU acceptance run: ``tiny-llama3-gpu``, a tiny random-weight Llama model with a
Llama-3-shaped vocabulary in a shape TensorRT-LLM's kernels take.

It is made where gpu-smoke runs, with what the production image has: the image's own transformers and torch
(TensorRT-LLM 1.2.1 pins transformers 4.57.3) for the weights, and a tokenizer built in code with ``tokenizers``
(koserve.smoke.tokenizer) — no npm, no network. The CPU fixture (hidden 64, 4 heads) has head size 16;
TensorRT-LLM's fused attention kernels are built for head sizes such as 64 and 128, so this one has hidden 256 over
4 query heads (head size 64) and 2 KV heads (GQA like Llama-3). It lives under ``$KOSERVE_CACHE/models``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from koserve.errors import ConfigError
from koserve.fixtures import build_tiny_model, cache_dir

GPU_FIXTURE = "tiny-llama3-gpu"
GPU_SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)
HEAD_SIZES_SUPPORTED = (64, 128)
# Bump when the checkpoint or its tokenizer changes, so a cache built by an older koserve is rebuilt.
GPU_FIXTURE_VERSION = "2"
_MARKER = "KOSERVE_GPU_SMOKE_FIXTURE.txt"


def head_size(config: dict) -> int:
    heads = int(config["num_attention_heads"])
    return int(config.get("head_dim") or int(config["hidden_size"]) // heads)


def gpu_fixture_dir() -> Path:
    return cache_dir() / "models" / GPU_FIXTURE


def _current(dest: Path) -> bool:
    marker = dest / _MARKER
    return (marker.is_file() and marker.read_text().startswith(f"version {GPU_FIXTURE_VERSION}\n")
            and (dest / "config.json").is_file() and (dest / "tokenizer.json").is_file())


def prepare_gpu_fixture(force: bool = False, log=print) -> Path:
    """Build (once) the GPU checkpoint under ``$KOSERVE_CACHE/models``; needs torch and transformers."""
    from koserve.smoke.tokenizer import write_tokenizer  # noqa: PLC0415

    dest = gpu_fixture_dir()
    if force or not _current(dest):
        log(f"building the {GPU_FIXTURE} checkpoint in {dest} (random weights, head size "
            f"{GPU_SHAPE['hidden_size'] // GPU_SHAPE['num_attention_heads']}, tokenizer built in code) ...")
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".gpu-smoke-tokenizer-", dir=dest.parent) as tmp:
                build_tiny_model("llama3", dest, shape=GPU_SHAPE, tokenizer=write_tokenizer(Path(tmp)))
        except ImportError as exc:
            raise ConfigError(f"building {GPU_FIXTURE} needs torch and transformers ({exc}); or pass --checkpoint") from None
        except PermissionError as exc:
            raise ConfigError(f"cannot write {dest} ({exc}): set KOSERVE_CACHE to a writable folder") from None
        (dest / _MARKER).write_text(f"version {GPU_FIXTURE_VERSION}\nRandom weights built by `koserve gpu-smoke`: "
                                    "output is not meaningful text.\n")
    return dest
