"""What every benchmark shares: the machine it ran on, medians, the printed table, the run log.

    from common import machine, print_table, save

Each measurement module (`epochs`, `evaluation`, `pinn_seeds`, `dvc_noop`, `auto`, ...) returns
a dict of what it measured and `rows` for the table; `save` writes the dict, with the machine, to
reports/benchmarks/<name>.json (git-ignored) and appends one line to history.jsonl beside it:
the run log, so figures over time are data, not prose.
Importing this module decides nothing: each entry point calls `openmp.settle()` first.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from appliedtorch.core import openmp
from appliedtorch.core.utils import write_json
from appliedtorch.machine.hardware import cpu_description

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "reports" / "benchmarks"
HEADER = ("benchmark", "tutorial", "project", "ratio", "target", "")
Row = tuple[str, str, str, str, str, str]


def median_of(run: Callable[[], float], reps: int) -> tuple[float, list[float]]:
    """Call `run` reps times; (median, all values)."""
    values = [run() for _ in range(reps)]
    return statistics.median(values), values


def fmt_s(x: float | None) -> str:
    """Seconds for the table: three significant digits, one decimal from 10 s."""
    return "-" if x is None else f"{x:.3g} s" if x < 10 else f"{x:.1f} s"


def verdict(ok: bool) -> str:
    """The table's last column."""
    return "ok" if ok else "MISSED"


def machine(device: str = "cpu") -> dict[str, Any]:
    """The CPU (model, flags), torch, the OpenMP wait decided and the load average, now."""
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_default_threads": torch.get_num_threads(),
        "openmp_wait": openmp.decision().tag(),
        "cpu_model": cpu_description(),
        "device": device,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "load_average_start": os.getloadavg()[0],
    }


def print_machine(m: dict[str, Any]) -> None:
    """Two lines: the CPU with the flags that decide its speed, then torch's view of it."""
    cpu = m["cpu_model"]
    print(
        f"CPU {cpu['model']} ({cpu['vendor']} family {cpu['family']}, {cpu['mhz']} MHz), flags: "
        f"{' '.join(cpu['flags'])}; native bf16: {cpu['native_bf16']}"
        + (f"; GPU {m['gpu']}" if m["gpu"] else "")
    )
    print(
        f"torch {m['torch']}, {m['cpu_count']} CPUs ({m['cpu_capability']}), "
        f"{m['torch_default_threads']} default threads, OpenMP threads wait: "
        f"{m['openmp_wait']}, load average {m['load_average_start']:.2f}",
        flush=True,
    )


def print_table(rows: list[Row]) -> None:
    """The rows under HEADER, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    for r in [HEADER, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def git_commit() -> str | None:
    """The commit the benchmark's code is at (None outside a git checkout)."""
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    )
    return proc.stdout.strip() or None


def save(name: str, report: dict[str, Any], path: Path | None = None) -> Path:
    """Write `report` (with `machine` in it) to `path` (default reports/benchmarks/<name>.json)
    and append a line for it to history.jsonl beside it; return the path written."""
    path = path or RESULTS / f"{name}.json"
    if "machine" in report:
        report["machine"]["load_average_end"] = os.getloadavg()[0]
    write_json(path, report)
    entry = {
        "benchmark": name,
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_description()["model"],
        "file": str(path),
        "table": report.get("table"),
    }
    with open(path.parent / "history.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    print(f"wrote {path}")
    return path
