"""What the machine computes natively (bf16 on the CPU or GPU, the CPU's peak FLOP/s), the
machine's signature, and the CPU's settings for training: denormal floats flushed, freed memory
kept for the next step.

    >>> resolve_bf16("auto", torch.device("cpu"))   # True only where bf16 is native
    >>> cpu_description()["bf16_flags"]             # e.g. ['avx512_bf16'] or []
    >>> with flush_denormals(): train()             # no slow denormal arithmetic on the CPU
    >>> keep_freed_memory("cpu")                    # no page faults for each step's tensors

bf16 autocast can be worth it only where the hardware multiplies bf16 natively: CUDA GPUs of
compute capability 8.0 or newer, and CPUs with AVX-512 BF16 or AMX (oneDNN then uses bf16
dot-product instructions). Elsewhere oneDNN emulates bf16 with fp32 arithmetic plus conversions,
many times slower than fp32 (docs/performance.md). Native does not mean faster for a given net:
`appliedtorch.machine.autotune` times both where bf16 is native.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
from collections.abc import Iterator
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


# Flags that make MKL, oneDNN and ATen pick different kernels on x86 (and so different speeds).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16")


def machine_signature(device: torch.device) -> dict[str, Any]:
    """What decides which kernels run and how fast: the GPU's name and compute capability, or
    the CPU's vendor, family, model, kernel-selecting flags and cores (with torch's kernel level).
    The model name alone is not enough: a virtual machine may call any Xeon "Intel Xeon"."""
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return {"gpu": torch.cuda.get_device_name(index), "capability": f"{major}.{minor}"}
    info, flags = _cpuinfo(), cpu_flags()
    return {
        "cpu": info.get("model name", platform.processor() or platform.machine()),
        "vendor": info.get("vendor_id", ""),
        "family": info.get("cpu family", ""),
        "model": info.get("model", ""),
        "flags": [f for f in KERNEL_FLAGS if f in flags],
        "cores": os.cpu_count() or 1,
        "kernels": torch.backends.cpu.get_cpu_capability(),
    }


def denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has no getter for the mode).

    1e-300 x 1e-20 is a float64 denormal (1e-320): with flush-to-zero it comes out as 0. A
    one-element tensor is computed on the calling thread alone.
    """
    return torch.tensor([1e-300], dtype=torch.float64).mul(1e-20).item() == 0.0


def _openmp_library() -> ctypes.CDLL | None:
    """The OpenMP runtime torch loaded: GNU's, or Intel's, which offers the same GOMP_parallel
    (it runs a function on every thread of the team). Other packages may load their own copy
    (scikit-learn does): the one in torch's directory is torch's; where none is, the only one."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = {
        line.split()[-1] for line in maps.splitlines() if "libgomp" in line or "libiomp" in line
    }
    torch_dir = str(Path(torch.__file__).resolve().parent)
    ours = [p for p in paths if p.startswith(torch_dir)] or (list(paths) if len(paths) == 1 else [])
    for path in ours:
        with contextlib.suppress(OSError, AttributeError):
            lib = ctypes.CDLL(path)
            lib.GOMP_parallel  # noqa: B018 - raises AttributeError when absent
            return lib
    return None


# glibc's mallopt parameters (malloc.h); its ceiling on the mmap threshold on 64-bit builds, and
# the largest trim threshold an int passes (free memory beyond 2 GiB at the heap's top goes back)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20
_TRIM_THRESHOLD = 2**31 - 1
_MALLOC_ENV = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_MAX_",
    "MALLOC_TOP_PAD_",
)
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _user_chose_allocation() -> str | None:
    """What says the user tuned or replaced glibc's malloc themselves (None: nothing does)."""
    for name in _MALLOC_ENV:
        if name in os.environ:
            return name
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(allocator in preload for allocator in _OTHER_ALLOCATORS):
        return "LD_PRELOAD"
    return None


@functools.cache
def _keep_freed_memory() -> bool:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if (chosen := _user_chose_allocation()) is not None:
        log.debug("malloc left as %s sets it", chosen)
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # A fixed mmap threshold also turns off glibc's own adjustment of the trim threshold.
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return ok and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1


def keep_freed_memory(device: torch.device | str = "cpu") -> bool:
    """Let this process reuse the memory torch frees instead of giving it back to the kernel.

    A training step frees and allocates the same activations and gradients every step. glibc
    returns blocks above its mmap threshold, and free memory at the heap's top, to the kernel, so
    the next step page-faults them in again and the kernel zeroes every page: about 54 MB a step
    of the CIFAR-10 CNN (docs/performance.md). With blocks up to 32 MiB served from the heap and
    the heap never trimmed, the process keeps the memory of its largest step until it exits, as
    torch's CUDA caching allocator does on a GPU. Values are unchanged. Set once per process, and
    not where malloc is not glibc's or the user chose its settings (MALLOC_*_ variables,
    glibc.malloc tunables, another allocator in LD_PRELOAD). Returns whether it is in effect.
    """
    if torch.device(device).type != "cpu":
        return False
    return _keep_freed_memory()


_PARALLEL_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def set_flush_denormal_everywhere(on: bool) -> bool:
    """torch.set_flush_denormal on this thread and on every thread of torch's OpenMP team.

    The mode lives in each thread's MXCSR register and torch sets it on the calling thread only,
    yet with 2+ threads the OpenMP workers do part of every large op; threads started later copy
    the creating thread's mode. Returns False where the CPU has no such mode (then nothing changes).
    """
    if not torch.set_flush_denormal(on):
        return False
    threads = torch.get_num_threads()
    lib = _openmp_library() if threads > 1 else None
    if lib is not None:
        # Each thread of the team (this one included) sets its own register; ctypes releases
        # the GIL during the call, so the workers can take it to run the callback.
        callback = _PARALLEL_FN(lambda _: torch.set_flush_denormal(on))
        lib.GOMP_parallel.argtypes = [_PARALLEL_FN, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
        lib.GOMP_parallel(callback, None, threads, 0)
    return True


@contextlib.contextmanager
def flush_denormals(device: torch.device | str = "cpu", enabled: bool = True) -> Iterator[None]:
    """Inside the block, denormal floats are read and written as zero on the CPU.

    Weights, gradients and Adam's moments that shrink towards zero become denormals, which x86
    CPUs compute many times slower than normal floats: an epoch slows down as training goes on.
    Flushing them changes values below ~1e-38 (float32) only. On exit the mode this thread had
    before is restored (on the OpenMP threads too). A GPU, or `enabled=False`, changes nothing.
    """
    if not enabled or torch.device(device).type != "cpu":
        yield
        return
    before = denormals_flushed()
    if not set_flush_denormal_everywhere(True):
        yield
        return
    try:
        yield
    finally:
        set_flush_denormal_everywhere(before)
