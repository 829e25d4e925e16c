"""What this machine has (memory, devices, a C++ compiler), and the one-line refusal of params
that ask for more, before any work is done or memory allocated.

    device = check_device("mps")        # AppliedTorchError on a machine without Apple's GPU
    check_memory(Need("cnn.width 1024 with cnn.arch resnet", {"weights": 8e9}), device)

Each stage estimates its own need (`appliedtorch.classify.nets.budget`, `appliedtorch.pinn.budget`,
`appliedtorch.demos.budget`) as named parts in bytes; this module knows no stage. An estimate is
refused when it exceeds what the device has free: RAM available to this process (the kernel's
MemAvailable, within RLIMIT_AS, RLIMIT_DATA and every cgroup memory limit above the process, v1 or v2) or the
GPU's free memory; the refusal names the limit it met. Estimates count the big
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


# Where the kernel says what this process may use; module attributes so tests can point them
# at fake trees.
PROC = Path("/proc")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as the largest page-aligned 64-bit number


@dataclass
class Limit:
    """A limit on this process's memory other than the machine's RAM, and what it leaves."""

    name: str  # e.g. "the cgroup's memory.max (4.0 GB) at /sys/fs/cgroup/job"
    free: float  # bytes it still leaves for new tensors
    # Bytes of this limit a byte of tensors takes, and what a run takes besides its tensors:
    # address space (RLIMIT_AS, RLIMIT_DATA) grows by more than the tensors do (see ADDRESS_SPACE).
    per_byte: float = 1.0
    reserve: float = 0.0

    def needed(self, tensors: float) -> float:
        """What `tensors` bytes of new tensors take of this limit."""
        return tensors * self.per_byte + self.reserve


def _read_int(path: Path) -> int | None:
    """A cgroup file's number; None for `max`, a missing or unreadable file, or no limit."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < UNLIMITED else None


def _cgroup_paths(proc: Path) -> dict[str, str]:
    """{"v2": path, "v1": path} of this process's memory cgroup, from /proc/self/cgroup."""
    out = {}
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and "v2" not in out:
            out["v2"] = path
        elif "memory" in controllers.split(","):
            out["v1"] = path
    return out


def cgroup_limits(proc: Path = PROC, root: Path = CGROUP_ROOT) -> list[Limit]:
    """The memory limits of this process's cgroup and of each cgroup above it (v2 `memory.max`
    with `memory.current`; v1 `memory.limit_in_bytes` with `memory.usage_in_bytes`)."""
    # A hybrid host mounts v2 at unified/ beside v1's controllers.
    v2 = root if (root / "cgroup.controllers").exists() else root / "unified"
    files = {
        "v2": (v2, "memory.max", "memory.current"),
        "v1": (root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"),
    }
    limits = []
    for version, path in _cgroup_paths(proc).items():
        mount, limit_file, usage_file = files[version]
        leaf = mount / path.lstrip("/")
        # In a container without its own cgroup namespace the host's path is not mounted here:
        # the mount point is then this process's cgroup.
        node = leaf if leaf.is_dir() else mount
        for level in (node, *node.parents):
            limit = _read_int(level / limit_file)
            if limit is not None:
                used = _read_int(level / usage_file) or 0
                limits.append(
                    Limit(
                        f"the cgroup's {limit_file} ({gigabytes(limit)}) at {level}",
                        max(limit - used, 0),
                    )
                )
            if level == mount:
                break
    return limits


# (resource name, what `ulimit` calls it, the /proc/self/status line of what counts against it)
# Address space a run takes beyond its tensors' bytes: each OpenMP thread's malloc arena, the
# copies made while a dataset loads, libraries loaded at first use (oneDNN's kernels, the model
# export). Measured on the default CNN (torch 2.14.1, 2 threads): the address space grew by
# 1.0-1.5 GB over an estimate of 0.58 GB, and a run allowed 1.1 GB more than at its check ran out.
ADDRESS_SPACE = {"per_byte": 2.0, "reserve": 1e9}

RLIMITS = (
    ("RLIMIT_AS", "the virtual-memory limit", "-v", "VmSize:"),
    ("RLIMIT_DATA", "the data-segment limit", "-d", "VmData:"),  # malloc and anonymous mmap
)


def rlimits(proc: Path = PROC) -> list[Limit]:
    """RLIMIT_AS (`ulimit -v`) and RLIMIT_DATA (`ulimit -d`), each less what this process
    already uses of it."""
    import resource

    try:
        status = (proc / "self" / "status").read_text().splitlines()
    except OSError:
        status = []
    out = []
    for name, words, flag, field_name in RLIMITS:
        soft, _ = resource.getrlimit(getattr(resource, name))
        if soft == resource.RLIM_INFINITY:
            continue
        used = next((line.split()[1:2] for line in status if line.startswith(field_name)), [])
        used_bytes = int(used[0]) * 1024 if used and used[0].isdigit() else 0  # kB
        label = f"{words} {name} (ulimit {flag} {soft // 1024}, {gigabytes(soft)})"
        out.append(Limit(label, max(soft - used_bytes, 0), **ADDRESS_SPACE))
    return out


def process_limits(proc: Path = PROC, root: Path = CGROUP_ROOT) -> list[Limit]:
    """Every limit on this process's memory besides the machine's RAM."""
    return [*rlimits(proc), *cgroup_limits(proc, root)]


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
    return binding_limit(device).free


def binding_limit(device: torch.device, tensors: float = 0.0) -> Limit:
    """The tightest bound on `tensors` bytes of new tensors on `device`: its free memory, or a
    process limit (RLIMIT_AS, a cgroup's) that leaves less room for them."""
    if device.type == "cuda":
        # Under torchrun each process checks its own GPU (LOCAL_RANK), not all of them GPU 0.
        index = device.index if device.index is not None else int(os.environ.get("LOCAL_RANK", 0))
        free, _ = torch.cuda.mem_get_info(index % torch.cuda.device_count())
        return Limit(f"free GPU memory on {device}", float(free))
    machine = Limit("memory available", _ram_available())
    limits = [machine, *process_limits(PROC, CGROUP_ROOT)]
    return min(limits, key=lambda lim: lim.free - lim.needed(tensors))


def check_memory(need: Need, device: torch.device) -> None:
    """Refuse, in one line with the estimate, a run that cannot fit in what `device` has free,
    naming the limit it met (the machine's memory, RLIMIT_AS or a cgroup's limit)."""
    limit = binding_limit(device, need.total)
    if limit.needed(need.total) <= limit.free:
        return
    parts = [name for name, size in need.parts.items() if size >= 0.05 * need.total]
    have = gigabytes(limit.free)
    if limit.name.startswith("the "):  # a limit of the process, not the machine's memory
        where = f"this process has {have} left under {limit.name}"
        if limit.per_byte != 1 or limit.reserve:
            where += f", and needs ~{gigabytes(limit.needed(need.total))} of it"
    else:
        where = f"this machine has {have} {limit.name}"
    raise AppliedTorchError(
        f"{need.what} needs ~{gigabytes(need.total)} for {_join(parts)}; {where}; {need.hint}"
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
