"""Local calibration text for ModelOpt's quantize.py.

quantize.py (TensorRT-LLM 1.2) takes ``--calib_dataset`` as a Hub name (its default,
``cnn_dailymail``, is English news) or a local folder it opens with
``datasets.load_dataset(folder, split="train")`` and reads the ``text`` column of. Korean
fine-tunes calibrate better on Korean text, so a recipe may point at:

* a folder already in that shape (``train.jsonl`` with ``{"text": ...}`` rows, or ``.txt`` files,
  one text per line) — passed through as is;
* a single ``.jsonl`` file (``{"text": ...}`` per line) or ``.txt`` file (texts separated by blank
  lines) — :func:`prepare_calibration_dir` writes it as ``<dest>/train.jsonl``.
"""

from __future__ import annotations

import json
from pathlib import Path

from koserve.errors import ConfigError

# Substrings quantize.py treats as Hub datasets whatever the path says.
_RESERVED = ("cnn_dailymail", "scienceqa", "science_qa", "pileval")


def read_calibration_texts(path: Path) -> list[str]:
    """The texts of a calibration file or folder, in order; ConfigError if malformed or empty."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".txt"))
        if not files:
            raise ConfigError(f"calibration folder {path} has no .jsonl/.json/.txt files")
        texts: list[str] = []
        for f in files:
            texts += _read_file(f, txt_lines=True)
    elif path.is_file():
        texts = _read_file(path, txt_lines=False)
    else:
        raise ConfigError(f"calibration data {path} does not exist")
    if not texts:
        raise ConfigError(f"calibration data {path} holds no text")
    return texts


def _read_file(path: Path, *, txt_lines: bool) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"calibration file {path} is not UTF-8: {exc}") from None
    if path.suffix in (".jsonl", ".json"):
        texts = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not a JSON object per line ({exc.msg})") from None
            text = row.get("text") if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f'{path}:{n}: each line needs a non-empty "text" string')
            texts.append(text)
        return texts
    if txt_lines:  # datasets' text builder: one row per line
        return [line for line in raw.splitlines() if line.strip()]
    return [block.strip() for block in raw.split("\n\n") if block.strip()]


def count_calibration_texts(path: Path) -> int:
    return len(read_calibration_texts(path))


def needs_preparation(path: Path) -> bool:
    """True when ``path`` is a file that must be turned into a dataset folder first."""
    return Path(path).is_file()


def check_dataset_folder_name(path: Path) -> None:
    lowered = str(path).lower()
    for word in _RESERVED:
        if word in lowered:
            raise ConfigError(
                f"calibration path {path} contains {word!r}: quantize.py would treat it as the Hub dataset; rename it"
            )


def prepare_calibration_dir(source: Path, dest: Path) -> Path:
    """Write the texts of ``source`` (a file) as ``dest/train.jsonl``; return ``dest``."""
    texts = read_calibration_texts(source)
    dest.mkdir(parents=True, exist_ok=True)
    check_dataset_folder_name(dest)
    out = dest / "train.jsonl"
    tmp = out.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for text in texts:
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return dest
