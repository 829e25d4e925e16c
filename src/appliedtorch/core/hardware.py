"""What the machine computes natively: bf16 support on the CPU or GPU, and the CPU's peak FLOP/s.

    >>> resolve_bf16("auto", torch.device("cpu"))   # True only where bf16 is native
    >>> cpu_description()["bf16_flags"]             # e.g. ['avx512_bf16'] or []

bf16 autocast is worth it only where the hardware multiplies bf16 natively: CUDA GPUs of compute
capability 8.0 or newer, and CPUs with AVX-512 BF16 or AMX (oneDNN then uses bf16 dot-product
instructions). Elsewhere oneDNN emulates bf16 with fp32 arithmetic plus conversions, measured
about 10x slower than fp32 on an AVX2-only CPU. `bf16: auto` picks it only where it is native.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_warned: set[str] = set()


@functools.cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty when unknown)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_native_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX) and oneDNN can use it."""
    if not set(NATIVE_BF16_FLAGS) & cpu_flags():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def cuda_native_bf16(device: torch.device) -> bool:
    """True for a CUDA device of compute capability 8.0 (Ampere) or newer."""
    if not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index) >= (8, 0)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively (fast) on `device`."""
    if device.type == "cuda":
        return cuda_native_bf16(device)
    if device.type == "cpu":
        return cpu_native_bf16()
    return False


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    """Turn the `bf16` param (auto | true | false) into a choice for `device`.

    `true` where bf16 is not native is honoured, with one warning per process and device type.
    """
    native = native_bf16(device)
    if setting == "auto":
        return native
    if setting and not native and device.type not in _warned:
        _warned.add(device.type)
        log.warning(
            "bf16: true on %s, which has no native bf16 (%s): autocast will emulate it and is "
            "likely much slower than fp32; use bf16: auto",
            device.type,
            "needs compute capability 8.0+" if device.type == "cuda" else "no avx512_bf16/amx_bf16",
        )
    return bool(setting)


def cpu_description() -> dict[str, Any]:
    """CPU model, vendor, family, cores, clock and the flags that decide speed (for benchmarks)."""
    info = _cpuinfo()
    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    return {
        "model": info.get("model name", platform.processor() or platform.machine()),
        "vendor": info.get("vendor_id", ""),
        "family": info.get("cpu family", ""),
        "cores": os.cpu_count() or 1,
        "mhz": float(info["cpu MHz"]) if info.get("cpu MHz") else None,
        "flags": [f for f in wanted if f in flags],
        "bf16_flags": [f for f in NATIVE_BF16_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_native_bf16(),
    }


def cpu_peak_gflops(fmt: str, threads: int | None = None) -> tuple[float | None, str]:
    """Estimated peak GFLOP/s of `threads` cores (default: all) for fp32 or bf16 matrix work.

    peak = cores x clock x FLOPs per cycle per core, where FLOPs per cycle assume two FMA pipes
    of the widest vector unit (2 x lanes x 2). AMD's Zen 4 (family 25) runs AVX-512 on 256-bit
    pipes, so it counts as 8 fp32 lanes. Native bf16 dot products (avx512_bf16) double the fp32
    rate; AMX tiles reach 1024 bf16 FLOPs per cycle per core. Returns (None, why) where the
    clock or the flags are unknown. An estimate: turbo clocks and pipe counts vary by model.
    """
    desc = cpu_description()
    flags = cpu_flags()
    if not desc["mhz"] or not flags:
        return None, "clock or flags unknown"
    cores = threads or desc["cores"]
    if "avx512f" in flags:
        zen4 = desc["vendor"] == "AuthenticAMD" and desc["family"] == "25"
        lanes, unit = (8, "AVX-512 on 256-bit pipes (Zen 4)") if zen4 else (16, "AVX-512")
    elif "avx2" in flags and "fma" in flags:
        lanes, unit = 8, "AVX2 FMA"
    else:
        lanes, unit = 4, "SSE"
    per_cycle = 2 * lanes * 2
    if fmt == "bf16":
        if "amx_bf16" in flags:
            per_cycle, unit = 1024, "AMX bf16 tiles"
        elif "avx512_bf16" in flags:
            per_cycle, unit = per_cycle * 2, f"{unit} + avx512_bf16 dot products"
        else:
            unit = f"{unit}, bf16 emulated (fp32 rate at best)"
    peak = cores * desc["mhz"] / 1e3 * per_cycle
    return peak, f"{cores} cores x {desc['mhz']:.0f} MHz x {per_cycle} FLOP/cycle ({unit})"
