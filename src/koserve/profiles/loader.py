"""Find and validate profile files."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from koserve.errors import ConfigError, validation_error_message
from koserve.profiles.schema import ModelProfile

_DATA = Path(__file__).parent / "data"


def builtin_profile_names() -> list[str]:
    """Names of the profiles shipped with koserve."""
    return sorted(p.stem for p in _DATA.glob("*.yaml"))


@lru_cache(maxsize=32)
def _load_file(path: Path) -> ModelProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read profile {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"profile {path} must be a mapping, got {type(data).__name__}")
    try:
        return ModelProfile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_error_message(f"profile {path}", exc)) from None


def load_profile(name_or_path: str | Path | ModelProfile) -> ModelProfile:
    """Load a built-in profile by name (``akallama-70b``) or a profile YAML file by path."""
    if isinstance(name_or_path, ModelProfile):
        return name_or_path
    text = str(name_or_path)
    builtin = _DATA / f"{text}.yaml"
    if "/" not in text and builtin.is_file():
        return _load_file(builtin)
    path = Path(text).expanduser()
    if path.is_file():
        return _load_file(path.resolve())
    raise ConfigError(
        f"unknown profile {text!r}: not a built-in ({', '.join(builtin_profile_names())}) and no such file"
    )
