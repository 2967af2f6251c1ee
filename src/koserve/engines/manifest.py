"""The engine folder's ``config.json`` (written by trtllm-build) and ``engine_manifest.json`` (by koserve).

``read_engine_limits`` is what ``koserve repo render`` uses to size the Triton model config
from a built engine; ``read_manifest`` gives the build record.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from koserve.errors import ConfigError

MANIFEST_NAME = "engine_manifest.json"
CHECKPOINT_MANIFEST_NAME = "checkpoint_manifest.json"  # backend pytorch: a HF checkpoint for the LLM API
HF_QUANT_CONFIG_NAME = "hf_quant_config.json"  # written by ModelOpt's HF export, read by the LLM API
ENGINE_CONFIG_NAME = "config.json"
MANIFEST_SCHEMA = 1


@dataclass(frozen=True)
class EngineLimits:
    """The limits a TensorRT-LLM engine was built with (from its ``config.json``)."""

    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int | None
    max_beam_width: int
    tp_size: int
    pp_size: int
    world_size: int
    dtype: str | None
    quant_algo: str | None
    kv_cache_quant_algo: str | None
    trtllm_version: str | None

    @property
    def max_output_len(self) -> int:
        """The most output tokens a request can ask for (a 1-token prompt)."""
        return self.max_seq_len - 1


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a JSON object")
    return data


def _int(section: dict, key: str, where: str, *, default: int | None = None, required: bool = True) -> int | None:
    value = section.get(key, default)
    if value is None:
        if required:
            raise ConfigError(f"{where} has no {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a positive integer, got {value!r}")
    return value


def read_engine_limits(engine_dir: str | Path) -> EngineLimits:
    """Read ``max_batch_size``, ``max_input_len``, ``max_seq_len``, TP/PP… from a TensorRT-LLM 1.x engine folder.

    Expects the 1.x layout: ``{"version", "pretrained_config": {"mapping": {...}, "quantization": {...}},
    "build_config": {...}}``. Raises ConfigError naming the file and field on anything else.
    """
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise ConfigError(f"engine folder {engine_dir} does not exist")
    path = engine_dir / ENGINE_CONFIG_NAME
    data = _load_json(path, "engine config")
    if "builder_config" in data and "build_config" not in data:
        raise ConfigError(
            f"{path} is a pre-0.8 TensorRT-LLM engine config (builder_config); rebuild with TensorRT-LLM 1.2"
        )
    build = data.get("build_config")
    pretrained = data.get("pretrained_config")
    if not isinstance(build, dict) or not isinstance(pretrained, dict):
        raise ConfigError(f"{path} lacks build_config/pretrained_config: not a TensorRT-LLM engine config")
    mapping = pretrained.get("mapping")
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}: pretrained_config has no mapping")
    where_b, where_m = f"{path}: build_config", f"{path}: pretrained_config.mapping"
    max_input_len = _int(build, "max_input_len", where_b)
    max_seq_len = _int(build, "max_seq_len", where_b)
    if max_input_len > max_seq_len:
        raise ConfigError(f"{path}: max_input_len {max_input_len} exceeds max_seq_len {max_seq_len}")
    tp = _int(mapping, "tp_size", where_m, default=1)
    pp = _int(mapping, "pp_size", where_m, default=1)
    cp = _int(mapping, "cp_size", where_m, default=1)
    world = _int(mapping, "world_size", where_m, default=tp * pp * cp)
    if world != tp * pp * cp:
        raise ConfigError(f"{where_m}: world_size {world} != tp_size {tp} × pp_size {pp} × cp_size {cp}")
    quant = pretrained.get("quantization") or {}
    version = data.get("version")
    return EngineLimits(
        max_batch_size=_int(build, "max_batch_size", where_b),
        max_input_len=max_input_len,
        max_seq_len=max_seq_len,
        max_num_tokens=_int(build, "max_num_tokens", where_b, required=False),
        max_beam_width=_int(build, "max_beam_width", where_b, default=1),
        tp_size=tp,
        pp_size=pp,
        world_size=world,
        dtype=pretrained.get("dtype"),
        quant_algo=quant.get("quant_algo"),
        kv_cache_quant_algo=quant.get("kv_cache_quant_algo"),
        trtllm_version=str(version) if version is not None else None,
    )


def read_manifest(engine_dir: str | Path) -> dict:
    """The ``engine_manifest.json`` koserve wrote next to the engine."""
    data = _load_json(Path(engine_dir) / MANIFEST_NAME, "engine manifest")
    if data.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"engine manifest in {engine_dir} has schema {data.get('schema')!r}, expected {MANIFEST_SCHEMA}")
    return data


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint_quantization(checkpoint_dir: str | Path) -> dict:
    """``quantization`` of a HF checkpoint's ``hf_quant_config.json`` (ModelOpt's HF export); else a ModelOpt
    ``quantization_config`` in its ``config.json`` (newer ModelOpt releases write it there too); {} when neither:
    not quantized."""
    path = Path(checkpoint_dir) / HF_QUANT_CONFIG_NAME
    if not path.is_file():
        config = Path(checkpoint_dir) / ENGINE_CONFIG_NAME
        quant = _load_json(config, "checkpoint config").get("quantization_config") if config.is_file() else None
        if isinstance(quant, dict) and quant.get("quant_method") == "modelopt":
            return {k: quant.get(k) for k in ("quant_algo", "kv_cache_quant_algo")}
        return {}
    data = _load_json(path, "quantization config")
    quant = data.get("quantization")
    if not isinstance(quant, dict):
        raise ConfigError(f"{path} has no 'quantization' object (ModelOpt's HF export writes one)")
    return quant


def read_checkpoint_manifest(checkpoint_dir: str | Path) -> dict:
    """The ``checkpoint_manifest.json`` koserve wrote into a backend-pytorch checkpoint."""
    data = _load_json(Path(checkpoint_dir) / CHECKPOINT_MANIFEST_NAME, "checkpoint manifest")
    if data.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"checkpoint manifest in {checkpoint_dir} has schema {data.get('schema')!r}, "
                          f"expected {MANIFEST_SCHEMA}")
    return data


def output_checksums(engine_dir: Path, manifest_name: str = MANIFEST_NAME) -> dict[str, dict]:
    """sha256 and size of every file in the engine folder except the manifest."""
    result = {}
    for path in sorted(p for p in engine_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(engine_dir).as_posix()
        if rel == manifest_name:
            continue
        result[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return result


def verify_manifest(engine_dir: str | Path) -> list[str]:
    """Files whose checksum no longer matches the manifest (empty when the engine or checkpoint is intact)."""
    engine_dir = Path(engine_dir)
    if (engine_dir / CHECKPOINT_MANIFEST_NAME).is_file() and not (engine_dir / MANIFEST_NAME).is_file():
        manifest = read_checkpoint_manifest(engine_dir)
    else:
        manifest = read_manifest(engine_dir)
    problems = []
    for rel, info in manifest.get("outputs", {}).items():
        path = engine_dir / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(path) != info["sha256"]:
            problems.append(f"{rel}: checksum differs from the manifest")
    return problems
