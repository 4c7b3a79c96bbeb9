"""What the hardware can do: bf16 support on the CPU and on CUDA devices.

On a CPU, bf16 pays only where the instruction set has bf16 dot products (x86 ``avx512_bf16`` / ``amx_bf16``,
Arm ``bf16`` / SVE ``svebf16``); elsewhere torch emulates it through fp32, slower than fp32 itself, so aha
refuses it there instead of running it.
"""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "svebf16")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)


def cpu_bf16_supported() -> bool:
    """True where the CPU has native bf16 instructions (Apple silicon counts: M2 and later have them)."""
    if any(f in cpu_flags() for f in CPU_BF16_FLAGS):
        return True
    return platform.system() == "Darwin" and platform.machine() == "arm64" and _mps_or_arm_bf16()


def _mps_or_arm_bf16() -> bool:
    try:
        return bool(torch.backends.mps.is_available())
    except AttributeError:
        return False


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 compute runs natively on ``device`` (a CUDA GPU with bf16, or a CPU with bf16 instructions)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_bf16_supported()
    return False


def bf16_refusal(device: str | torch.device = "cpu") -> str:
    """Why bf16 is refused on ``device``, with what to use instead (for error messages)."""
    device = torch.device(device)
    if device.type == "cpu":
        return (
            "this CPU has no bf16 instructions (none of " + ", ".join(CPU_BF16_FLAGS) + " in /proc/cpuinfo), "
            "so bf16 would run emulated, slower than fp32: use fp32 (bf16=False / --dtype float32)"
        )
    return f"{device} has no bf16 support: use fp32 (bf16=False / --dtype float32) or fp16 on a GPU"
