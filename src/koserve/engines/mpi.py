"""What ``mpirun`` must carry to TensorRT-LLM ranks on other nodes (multi-node serving over ssh).

Open MPI starts remote ranks through ssh in a non-interactive shell, which gets the login environment of the remote
pod, not the container's ``ENV``: without ``-x`` the ranks lose the image's ``PATH`` / ``LD_LIBRARY_PATH`` (TensorRT,
TensorRT-LLM, HPC-X libraries) and every ``NCCL_*`` tuning variable. ``--prefix`` tells the remote ``orted`` where
Open MPI itself lives (``<prefix>/bin``, ``<prefix>/lib``), and the ``mpirun`` path is made absolute.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

# Always forwarded when set.
FORWARDED_VARS = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "HOME", "KOSERVE_TEMPLATES", "KOSERVE_CACHE",
                  "HF_HOME", "CUDA_DEVICE_ORDER", "CUDA_MODULE_LOADING")
# Forwarded by prefix: NCCL and UCX transport tuning, TensorRT-LLM's own switches.
FORWARDED_PREFIXES = ("NCCL_", "UCX_", "TRTLLM_", "TLLM_")
# Never forwarded: which GPUs a pod sees is the pod's own business (device plugin).
LOCAL_ONLY = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")


def forwarded_names(env: Mapping[str, str]) -> list[str]:
    """Names of the variables of ``env`` the ranks need, in a stable order."""
    names = [n for n in FORWARDED_VARS if n in env]
    names += sorted(n for n in env if n.startswith(FORWARDED_PREFIXES) and n not in names and n not in LOCAL_ONLY)
    return names


def mpi_prefix(mpirun_path: str) -> str | None:
    """Open MPI's install prefix for an ``.../bin/mpirun`` (symlinks resolved), else None."""
    path = Path(mpirun_path).resolve()
    return str(path.parent.parent) if path.parent.name == "bin" else None


def mpirun_head(mpirun: str = "mpirun", env: Mapping[str, str] | None = None) -> list[str]:
    """``mpirun`` (absolute when found), ``--allow-run-as-root``, ``--prefix`` and one ``-x NAME`` per variable."""
    env = os.environ if env is None else env
    found = shutil.which(mpirun, path=env.get("PATH")) if os.sep not in mpirun else mpirun
    head = [found or mpirun, "--allow-run-as-root"]
    prefix = mpi_prefix(found) if found else None
    if prefix:
        head += ["--prefix", prefix]
    for name in forwarded_names(env):
        head += ["-x", name]
    return head
