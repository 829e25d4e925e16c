"""What this machine has (memory, devices, a C++ compiler), and the one-line refusal of params
that ask for more, before any work is done or memory allocated.

    device = check_device("mps")        # AppliedTorchError on a machine without Apple's GPU
    check_memory(Need("cnn.width 1024 with cnn.arch resnet", {"weights": 8e9}), device)

Each stage estimates its own need (`appliedtorch.classify.nets.budget`, `appliedtorch.pinn.budget`,
`appliedtorch.demos.budget`) as named parts in bytes; this module knows no stage. An estimate is
refused when it exceeds what the device has free: RAM available to this process (the kernel's
MemAvailable, within a cgroup's limit) or the GPU's free memory. Estimates count the big
tensors (weights, gradients, optimizer state, activations of a batch, data on the device), not
the allocator's slack, so a refusal means the run could not have fitted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import resolve_device


@dataclass
class Need:
    """What a run will allocate on its device: named parts in bytes, and what asks for them."""

    what: str  # the params that ask for it, e.g. "pinn.hidden_sizes [65536, 65536, 65536]"
    parts: dict[str, float] = field(default_factory=dict)  # e.g. {"weights": 3.4e10, ...}
    hint: str = "make it smaller"  # what to change

    @property
    def total(self) -> float:
        return sum(self.parts.values())


def gigabytes(n: float) -> str:
    """`41 GB`, `1.5 GB`, `120 MB`: sizes in a message."""
    if n >= 1e12:
        return f"{n / 1e12:,.0f} TB"
    if n >= 10e9:
        return f"{n / 1e9:.0f} GB"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{max(n / 1e6, 1):.0f} MB"


def _cgroup_free() -> float | None:
    """Bytes this process's cgroup (v2) may still use, when it has a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    return None if limit == "max" else max(int(limit) - int(used), 0)


def _ram_available() -> float:
    """The kernel's estimate of RAM available without swapping (MemAvailable), else psutil's."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import psutil  # off Linux (DVC and MLflow install it)

    return float(psutil.virtual_memory().available)


def available_bytes(device: torch.device) -> float:
    """Memory free for new tensors on `device` (RAM for the CPU)."""
    if device.type == "cuda":
        # Under torchrun each process checks its own GPU (LOCAL_RANK), not all of them GPU 0.
        index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
        free, _ = torch.cuda.mem_get_info(index % torch.cuda.device_count())
        return float(free)
    free = _ram_available()
    cgroup = _cgroup_free()
    return min(free, cgroup) if cgroup is not None else free


def check_memory(need: Need, device: torch.device) -> None:
    """Refuse, in one line with the estimate, a run that cannot fit in `device`'s free memory."""
    have = available_bytes(device)
    if need.total <= have:
        return
    parts = [name for name, size in need.parts.items() if size >= 0.05 * need.total]
    where = "free GPU memory on " + str(device) if device.type == "cuda" else "memory available"
    raise AppliedTorchError(
        f"{need.what} needs ~{gigabytes(need.total)} for {_join(parts)}; this machine has "
        f"{gigabytes(have)} {where}; {need.hint}"
    )


def _join(words: list[str]) -> str:
    return ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else "".join(words)


def check_device(name: str) -> torch.device:
    """The `device` param as a torch.device this machine has; one line if it lacks it
    (`mps` off a Mac, `cuda` without CUDA, `cuda:7` with one GPU)."""
    if name == "mps" and not torch.backends.mps.is_available():
        raise AppliedTorchError(
            "device 'mps' (Apple's GPU) was asked for but this machine has none; set device: "
            "auto or device: cpu in params.yaml"
        )
    return resolve_device(name)


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU code generator would run (inductor's cpp.cxx: $CXX,
    else g++), if it is there and runs; None otherwise."""
    from torch._inductor import config

    candidates = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    for cxx in filter(None, candidates):
        if shutil.which(cxx) is None:
            continue
        try:
            subprocess.run([cxx, "--version"], capture_output=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            continue
        return cxx
    return None


def check_compile(key: str, device: torch.device) -> None:
    """Refuse `<key>: true` (torch.compile) where it would fail at the first batch: no C++
    compiler for CPU code, or no Triton and C compiler for CUDA code."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401 - only its presence is checked
        except ImportError:
            raise AppliedTorchError(
                f"{key}: true needs Triton for CUDA code (pip install triton); set {key}: false"
            ) from None
        c = os.environ.get("CC") or next(filter(shutil.which, ("cc", "gcc", "clang")), None)
        if c is None or shutil.which(c) is None:
            raise AppliedTorchError(
                f"{key}: true needs a C compiler for Triton (cc, gcc or clang; none found); "
                f"install one or set {key}: false"
            )
        return
    if cxx_compiler() is None:
        raise AppliedTorchError(
            f"{key}: true needs a C++ compiler for torch.compile's CPU code ($CXX or g++; none "
            f"runs here); install one (apt install g++) or set {key}: false"
        )
