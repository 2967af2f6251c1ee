"""A catalogue of GPUs the build planner knows: memory, HBM bandwidth, compute capability.

Memory is what ``nvidia-smi --query-gpu=memory.total`` reports (MiB), because that is
what TensorRT-LLM's allocator starts from. Bandwidths are the vendor's peak figures
(the decode roofline built on them is an upper bound, never a prediction).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from koserve.errors import ConfigError

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model."""

    key: str
    display_name: str
    memory_mib: int
    hbm_bandwidth_gbps: float  # GB/s (10^9 bytes per second), vendor peak
    compute_capability: tuple[int, int]
    architecture: str
    nvidia_smi_names: tuple[str, ...]  # regexes matched against nvidia-smi's `name`

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    @property
    def sm(self) -> int:
        """Compute capability as TensorRT engines see it (90 for Hopper)."""
        return self.compute_capability[0] * 10 + self.compute_capability[1]

    @property
    def supports_bf16(self) -> bool:
        return self.sm >= 80

    @property
    def supports_fp8(self) -> bool:
        """FP8 tensor cores: Ada (8.9), Hopper (9.0) and newer."""
        return self.sm >= 89

    @property
    def supports_int4_awq(self) -> bool:
        """TensorRT-LLM's W4A16 (AWQ / weight-only) kernels: Ampere (8.0) and newer."""
        return self.sm >= 80

    @property
    def supports_nvfp4(self) -> bool:
        """NVFP4 tensor cores: Blackwell (10.0 and newer). TensorRT-LLM's hardware matrix marks NVFP4 for
        Blackwell sm100/103/120 only (docs/source/features/quantization.md@09d4c79b)."""
        return self.sm >= 100

    @property
    def supports_pytorch_int4_awq(self) -> bool:
        """W4A16 AWQ on the PyTorch backend: the same hardware matrix marks it for Ampere, Ada and Hopper, not for
        Blackwell."""
        return 80 <= self.sm < 100

    @property
    def cc_text(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


_CATALOGUE: tuple[GpuSpec, ...] = (
    # B200 (HGX): "179 GB HBM3e", sm_100, 8.0 TB/s per Vultr's inference cookbook (docs.vultr.com, hardware-overview,
    # figures from their HGX B200 node). 183359 MiB = 179.06 GiB; the exact MiB figure is not on that page (no B200
    # here to query): the planner's KV figures for B200 carry that uncertainty (well under 0.1 %).
    GpuSpec("b200-180gb", "B200 180GB", 183359, 8000.0, (10, 0), "Blackwell", (r"\bB200\b",)),
    GpuSpec("h100-sxm-80gb", "H100 80GB SXM", 81559, 3350.0, (9, 0), "Hopper",
            (r"H100 80GB HBM3", r"H100.*SXM")),
    GpuSpec("h100-pcie-80gb", "H100 80GB PCIe", 81559, 2000.0, (9, 0), "Hopper", (r"H100 PCIe",)),
    GpuSpec("h100-nvl-94gb", "H100 NVL 94GB", 95830, 3900.0, (9, 0), "Hopper", (r"H100 NVL",)),
    GpuSpec("h200-141gb", "H200 141GB", 143771, 4800.0, (9, 0), "Hopper", (r"H200",)),
    GpuSpec("a100-sxm-80gb", "A100 80GB SXM", 81920, 2039.0, (8, 0), "Ampere",
            (r"A100-SXM4-80GB", r"A100 80GB")),
    GpuSpec("a100-pcie-80gb", "A100 80GB PCIe", 81920, 1935.0, (8, 0), "Ampere", (r"A100 80GB PCIe",)),
    GpuSpec("a100-sxm-40gb", "A100 40GB SXM", 40960, 1555.0, (8, 0), "Ampere",
            (r"A100-SXM4-40GB", r"A100-PCIE-40GB", r"A100 40GB")),
    GpuSpec("l40s-48gb", "L40S 48GB", 46068, 864.0, (8, 9), "Ada", (r"L40S",)),
    GpuSpec("l40-48gb", "L40 48GB", 46068, 864.0, (8, 9), "Ada", (r"\bL40\b(?!S)",)),
    GpuSpec("a6000-48gb", "RTX A6000 48GB", 49140, 768.0, (8, 6), "Ampere", (r"RTX A6000",)),
    GpuSpec("l4-24gb", "L4 24GB", 23034, 300.0, (8, 9), "Ada", (r"\bL4\b",)),
    GpuSpec("a10g-24gb", "A10G 24GB", 23028, 600.0, (8, 6), "Ampere", (r"A10G",)),
    GpuSpec("v100-sxm-32gb", "V100 32GB SXM", 32768, 900.0, (7, 0), "Volta", (r"V100",)),
)

GPUS: dict[str, GpuSpec] = {g.key: g for g in _CATALOGUE}


def get_gpu(key: str) -> GpuSpec:
    """Look a GPU up by catalogue key (``h100-sxm-80gb``)."""
    try:
        return GPUS[key]
    except KeyError:
        raise ConfigError(f"unknown GPU {key!r}; known: {', '.join(GPUS)} (`koserve build gpus` describes them)") from None


def format_catalogue() -> str:
    """One line per GPU: the key recipes and ``--gpu`` take, the name, memory, architecture and precisions."""
    lines = [f"{'KEY':16s} {'GPU':16s} {'MEMORY':>8s}  {'ARCH':7s} CC   PRECISIONS"]
    for g in _CATALOGUE:
        precisions = ["bf16" if g.supports_bf16 else "fp16", *(["fp8"] if g.supports_fp8 else []),
                      *(["int4_awq"] if g.supports_int4_awq else []), *(["nvfp4"] if g.supports_nvfp4 else [])]
        lines.append(f"{g.key:16s} {g.display_name:16s} {g.memory_mib / 1024:6.1f} GiB  {g.architecture:7s} "
                     f"{g.cc_text:4s} {', '.join(precisions)}")
    return "\n".join(lines)


def match_gpu_name(nvidia_smi_name: str) -> GpuSpec | None:
    """The catalogue entry for a name as nvidia-smi prints it (``NVIDIA H100 80GB HBM3``), if any.

    More specific patterns win: entries are tried in catalogue order, PCIe/NVL before SXM fallbacks.
    """
    ordered = sorted(_CATALOGUE, key=lambda g: "SXM" in g.display_name)
    for gpu in ordered:
        if any(re.search(p, nvidia_smi_name, re.IGNORECASE) for p in gpu.nvidia_smi_names):
            return gpu
    return None
