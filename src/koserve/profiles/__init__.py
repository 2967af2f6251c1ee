"""Model profiles: what koserve knows about each served model, as validated data.

A profile is a YAML file. Two ship with koserve (``akallama-70b``, ``komt-13b``);
``load_profile`` also accepts a path to a user's own file.
"""

from koserve.profiles.schema import (
    Architecture,
    ChatSpec,
    GenerationDefaults,
    ModelProfile,
)
from koserve.profiles.loader import builtin_profile_names, load_profile

__all__ = [
    "Architecture",
    "ChatSpec",
    "GenerationDefaults",
    "ModelProfile",
    "builtin_profile_names",
    "load_profile",
]
