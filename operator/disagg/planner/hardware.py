"""GPU presets: the three numbers a roofline needs (peak dense bf16 FLOP/s, HBM bandwidth, memory).

The figures are the vendor's *dense* (no 2:4 sparsity) bf16 tensor-core peaks and the HBM
bandwidth of the SXM/flagship variant, because that is what the capacity arithmetic divides by.
Nobody reaches those peaks; the gap is the job of :mod:`disagg.planner.calibration`, which holds
measured efficiencies per GPU instead of baking fudge factors into the presets.  Keeping the spec
sheet and the measured efficiency apart means a new card is one line here, and a calibration run
on it later only adds a file.
"""

from __future__ import annotations

from dataclasses import dataclass

from disagg.planner.errors import UnknownPresetError

GiB = 1024**3


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator as the roofline sees it."""

    name: str
    """Preset key, e.g. ``h100-sxm``."""
    peak_bf16_flops: float
    """Dense bf16 tensor-core peak, FLOP/s (spec sheet, no sparsity)."""
    hbm_bandwidth: float
    """HBM bandwidth, bytes/s (spec sheet)."""
    memory_bytes: int
    """Device memory, bytes."""
    display_name: str = ""
    """Marketing name for tables."""
    nvlink_bandwidth: float = 0.0
    """Per-GPU NVLink bandwidth in one direction, bytes/s; 0 means PCIe only (tensor-parallel
    all-reduces then go over PCIe at ``pcie_bandwidth``)."""
    pcie_bandwidth: float = 64e9
    """Host link bandwidth in one direction, bytes/s (PCIe Gen5 x16 by default)."""

    @property
    def interconnect_bandwidth(self) -> float:
        """Bandwidth a tensor-parallel all-reduce runs at, bytes/s."""
        return self.nvlink_bandwidth if self.nvlink_bandwidth > 0 else self.pcie_bandwidth


GPUS: dict[str, GPUSpec] = {
    "h100-sxm": GPUSpec(
        name="h100-sxm",
        display_name="NVIDIA H100 SXM 80GB",
        peak_bf16_flops=989.4e12,
        hbm_bandwidth=3.35e12,
        memory_bytes=80 * GiB,
        nvlink_bandwidth=450e9,
    ),
    "h200": GPUSpec(
        name="h200",
        display_name="NVIDIA H200 SXM 141GB",
        peak_bf16_flops=989.4e12,
        hbm_bandwidth=4.8e12,
        memory_bytes=141 * GiB,
        nvlink_bandwidth=450e9,
    ),
    "a100": GPUSpec(
        name="a100",
        display_name="NVIDIA A100 SXM 80GB",
        peak_bf16_flops=312e12,
        hbm_bandwidth=2.039e12,
        memory_bytes=80 * GiB,
        nvlink_bandwidth=300e9,
        pcie_bandwidth=32e9,
    ),
    "l40s": GPUSpec(
        name="l40s",
        display_name="NVIDIA L40S 48GB",
        peak_bf16_flops=362.05e12,
        hbm_bandwidth=864e9,
        memory_bytes=48 * GiB,
        nvlink_bandwidth=0.0,
        pcie_bandwidth=32e9,
    ),
    "b200": GPUSpec(
        name="b200",
        display_name="NVIDIA B200 180GB",
        peak_bf16_flops=2.25e15,
        hbm_bandwidth=8.0e12,
        memory_bytes=180 * GiB,
        nvlink_bandwidth=900e9,
    ),
}

DEFAULT_GPU = "h100-sxm"

_ALIASES = {"h100": "h100-sxm", "h100sxm": "h100-sxm", "a100-sxm": "a100", "h200-sxm": "h200"}


def get_gpu(name: str = DEFAULT_GPU) -> GPUSpec:
    """Look a preset up by key (case-insensitive; ``h100`` means ``h100-sxm``).

    Raises :class:`UnknownPresetError` naming the known presets when ``name`` is not one of them.
    """
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    try:
        return GPUS[key]
    except KeyError:
        known = ", ".join(sorted(GPUS))
        raise UnknownPresetError(f"unknown GPU {name!r}; known GPUs: {known}") from None
