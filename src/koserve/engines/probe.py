"""What GPUs this machine has, from ``nvidia-smi`` (found on PATH, so tests can put a fake first)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import asdict, dataclass

from koserve.engines.gpus import MIB, GpuSpec, match_gpu_name
from koserve.errors import KoserveError

QUERY = "index,name,memory.total,memory.free,compute_cap,driver_version"


class GpuProbeError(KoserveError):
    """No usable GPU could be found."""


@dataclass(frozen=True)
class DetectedGpu:
    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int
    compute_cap: str
    driver_version: str

    @property
    def memory_free_bytes(self) -> int:
        return self.memory_free_mib * MIB

    @property
    def catalogue(self) -> GpuSpec | None:
        return match_gpu_name(self.name)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_nvidia_smi_csv(text: str) -> list[DetectedGpu]:
    """Parse ``nvidia-smi --query-gpu=<QUERY> --format=csv,noheader,nounits`` output."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 6:
            raise GpuProbeError(f"unexpected nvidia-smi line (want 6 fields: {QUERY}): {line!r}")
        try:
            gpus.append(DetectedGpu(int(parts[0]), parts[1], int(float(parts[2])), int(float(parts[3])),
                                    parts[4], parts[5]))
        except ValueError:
            raise GpuProbeError(f"unexpected nvidia-smi line: {line!r}") from None
    return gpus


def probe_gpus(timeout: float = 30.0) -> list[DetectedGpu]:
    """The GPUs visible to this process (honouring ``CUDA_VISIBLE_DEVICES`` given as indices)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        raise GpuProbeError(
            "no GPU: nvidia-smi is not on PATH. Run inside a GPU container "
            "(e.g. nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3 with --gpus all)"
        )
    try:
        proc = subprocess.run(
            [exe, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        raise GpuProbeError(f"no GPU: nvidia-smi did not answer within {timeout:.0f}s") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise GpuProbeError(
            f"no GPU: nvidia-smi failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}"
        )
    gpus = parse_nvidia_smi_csv(proc.stdout)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        wanted = [int(v) for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if g.index in wanted]
    if not gpus:
        raise GpuProbeError("no GPU: nvidia-smi lists no (visible) GPU")
    return gpus
