"""What this machine can do: the device to compute on and the CPU features that decide bf16 and kernels.

Ground level, so the trainer, the server and the benchmarks ask the same probes without importing
one another.
"""

from __future__ import annotations

import functools

import torch


def default_device() -> torch.device:
    """The first CUDA GPU where there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@functools.cache
def cpu_flags() -> set[str]:
    """The CPU's feature flags, as `/proc/cpuinfo` lists them (empty where it does not)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return set()
    return {flag for line in info.splitlines() if line.startswith("flags") for flag in line.partition(":")[2].split()}


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: there bf16 matmuls run several times faster than fp32 (BENCHMARKS.md)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_amx() -> bool:
    """Intel's AMX bf16 matrix units (Sapphire Rapids and later)."""
    return "amx_bf16" in cpu_flags()


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 compute pays off on `device`: a CUDA GPU with bf16, or a CPU with fast bf16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def cuda_memory_mb() -> list[int]:
    """Each visible CUDA GPU's memory in MiB (empty without CUDA): what a worker can take on."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_properties(i).total_memory // 2**20 for i in range(torch.cuda.device_count())]
