"""Training epoch seconds: the tutorial's loop against the project's, per thread count and dtype.

    python benchmarks/epochs.py --section mlp --reps 3
    python benchmarks/epochs.py --section cnn --cnn-batches 40 --device cuda

On full-size synthetic data generated in memory (`loops.load_synthetic`), best of `--reps`, the
two loops alternated so that a change in load hits both:

- the tutorial's loop (`loops.tutorial_epoch`) in a process of its own, `tutorial_loop.py`, with
  torch's defaults (OpenMP's spinning wait, glibc's malloc, torch's thread count) and the user's
  own `OMP_WAIT_POLICY`, as its user runs it;
- the project's `train_classifier` with params.yaml's section in this process, set up as a stage
  is (`openmp.settle()` first), with params.yaml's `threads`, with 1 and with all cores;
- where bf16 is native, the project's loop with the dtype `bf16: auto` did not choose, forced:
  `auto` must be within AUTO_TOLERANCE of it.

The CNN's loops run `--cnn-batches` batches and the epoch is extrapolated to the full epoch.
Each loop's achieved GFLOP/s is set beside the machine's peak (`flops.epoch_arithmetic`).
Writes reports/benchmarks/epochs.json.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import json
import math
import os
import subprocess
import sys
import unittest.mock
from pathlib import Path
from typing import Any

import torch

import flops
import loops
from appliedtorch.classify.params import ClassifierParams
from appliedtorch.classify.training import tuning
from appliedtorch.core.utils import resolve_device
from appliedtorch.data.loading import ImageData
from appliedtorch.machine.hardware import native_bf16
from appliedtorch.params import load_params
from common import REPO, Row, fmt_s, machine, print_machine, print_table, save, verdict

AUTO_TOLERANCE = 1.10  # `bf16: auto` may be at most this much slower than the other dtype
WARM_TEST_IMAGES = 256  # evaluation is not timed: a short test set keeps it out of the way


def thread_options(config: ClassifierParams, device: str) -> list[int]:
    """params.yaml's thread count first (`auto` and null: torch's default), then 1 and torch's
    default (all cores) where they differ."""
    default = torch.get_num_threads()
    first = config.threads if isinstance(config.threads, int) else default
    if device.startswith("cuda"):  # CPU threads barely matter to a GPU loop
        return [first]
    return list(dict.fromkeys([first, 1, default]))


def users_environment() -> dict[str, str]:
    """This process's environment without the OpenMP wait `openmp.settle()` set in it."""
    env = dict(os.environ)
    if env.pop(openmp.MARK, None) == "passive":
        env.pop(openmp.POLICY, None)  # PASSIVE was appliedtorch's, not the user's
    return env


def tutorial_in_own_process(
    section: str,
    data: ImageData,
    params: Path,
    batches: int | None,
    device: str,
    seed: int,
    accuracy: bool,
) -> dict[str, Any]:
    """One tutorial epoch in `tutorial_loop.py` on the same synthetic data (made again there
    from the same seed) under the user's environment; its JSON line (seconds, batches, ...)."""
    cmd = [sys.executable, str(Path(__file__).with_name("tutorial_loop.py")), section]
    cmd += ["--train", str(len(data.train_images)), "--test", str(len(data.test_images))]
    cmd += ["--params", str(params), "--device", device, "--seed", str(seed)]
    cmd += ["--batches", str(batches)] if batches else []
    cmd += ["--accuracy"] if accuracy else []
    proc = subprocess.run(cmd, env=users_environment(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the tutorial's loop failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def warm_up(
    data: ImageData, base: ClassifierParams, counts: list[int], device: str, seed: int
) -> dict[Any, ClassifierParams]:
    """The configurations to time, each run once untimed first; keys: thread counts, and
    'other' for the dtype `auto` did not choose where bf16 is native.

    oneDNN creates (and JITs) its kernels per shape and format on first use, and a GPU loads its
    own: that belongs to no epoch. This first run is also where `auto` is decided (and cached),
    as in the stage. Its 3 batches would be too short a run to probe (tuning.PROBE_SHARE); the
    stage's run of thousands of steps is not, so the warm-up decides as that run does."""
    warm = loops.with_test_subset(data, WARM_TEST_IMAGES)
    configs: dict[Any, ClassifierParams] = {}
    with unittest.mock.patch.object(tuning, "PROBE_SHARE", math.inf):
        for threads in counts:
            config = base.model_copy(update={"threads": threads})
            bf16 = loops.project_epoch(warm, config, 3, device, seed)[3]
            configs[threads] = config.model_copy(update={"bf16": bf16})
    if native_bf16(resolve_device(device)):
        chosen = configs[counts[0]]
        configs["other"] = chosen.model_copy(update={"bf16": not chosen.bf16})
        loops.project_epoch(warm, configs["other"], 3, device, seed)
    return configs


def alternate(
    section: str,
    data: ImageData,
    params: Path,
    configs: dict[Any, ClassifierParams],
    batches: int | None,
    reps: int,
    device: str,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[Any, list[float]], float | None]:
    """`reps` rounds of the tutorial's epoch then each configuration's, epochs in seconds
    extrapolated to the full epoch; (tutorial runs, project runs by key, project accuracy)."""
    steps = math.ceil(len(data.train_images) / configs[next(iter(configs))].batch_size)
    timed = data if batches is None else loops.with_test_subset(data, WARM_TEST_IMAGES)
    tutorial: list[dict[str, Any]] = []
    runs: dict[Any, list[float]] = {key: [] for key in configs}
    accuracy = None
    for rep in range(reps):
        # Accuracy only from whole epochs: the first round's, as a check that both loops learn.
        first_whole = rep == 0 and batches is None
        tut = tutorial_in_own_process(section, data, params, batches, device, seed, first_whole)
        tutorial.append({**tut, "epoch_seconds": tut["seconds"] / tut["batches"] * steps})
        for key, config in configs.items():
            seconds, acc, done, _ = loops.project_epoch(timed, config, batches, device, seed)
            runs[key].append(seconds / done * steps)
            if first_whole and key == next(iter(configs)):
                accuracy = acc
    return tutorial, runs, accuracy


def other_dtype(
    runs: list[float], chosen_seconds: float, tutorial: float, arithmetic: dict[str, Any]
) -> dict[str, Any]:
    """The forced other dtype's best epoch beside `auto`'s choice."""
    return {
        "format": arithmetic["format"],
        "seconds": min(runs),
        "runs": runs,
        "ratio": tutorial / min(runs),
        "auto_over_other": chosen_seconds / min(runs),
        "arithmetic": arithmetic,
    }


def by_threads(config: ClassifierParams, runs: list[float], tutorial: float) -> dict[str, Any]:
    """One thread count's best epoch and its ratio to the tutorial's."""
    return {
        "format": "bf16" if config.bf16 else "fp32",
        "seconds": min(runs),
        "runs": runs,
        "ratio": tutorial / min(runs),
    }


def measure(
    section: str,
    data: ImageData,
    params: Path,
    base: ClassifierParams,
    batches: int | None,
    reps: int,
    device: str,
    seed: int,
) -> dict[str, Any]:
    """Tutorial vs project epoch seconds per thread count, and the project forced to the dtype
    `bf16: auto` did not choose (where bf16 is native): best of `reps`, the loops alternated."""
    counts = thread_options(base, device)
    chosen = counts[0]
    configs = warm_up(data, base, counts, device, seed)
    tut_runs, runs, accuracy = alternate(
        section, data, params, configs, batches, reps, device, seed
    )
    tutorial = min(r["epoch_seconds"] for r in tut_runs)
    best = {key: min(r) for key, r in runs.items()}
    fmt = "bf16" if configs[chosen].bf16 else "fp32"

    def arithmetic(seconds: float, threads: int, fmt: str) -> dict[str, Any]:
        return flops.epoch_arithmetic(data, base, seconds, threads, fmt, device)

    other = None
    if "other" in configs:
        other_fmt = "bf16" if configs["other"].bf16 else "fp32"
        other_arith = arithmetic(best["other"], chosen, other_fmt)
        other = other_dtype(runs["other"], best[chosen], tutorial, other_arith)
    steps = math.ceil(len(data.train_images) / base.batch_size)
    return {
        "device": device,
        "format": fmt,
        "bf16_setting": base.bf16,
        "tutorial_arithmetic": arithmetic(tutorial, tut_runs[0]["threads"], "fp32"),
        "project_arithmetic": arithmetic(best[chosen], chosen, fmt),
        "project_other": other,
        "train_samples": len(data.train_images),
        "batch_size": base.batch_size,
        "batches_per_epoch": steps,
        "batches_timed": batches or steps,
        "extrapolated": batches is not None and batches < steps,
        "reps": reps,
        "tutorial_threads": tut_runs[0]["threads"],
        "tutorial_omp_wait_policy": tut_runs[0]["omp_wait_policy"],
        "tutorial_seconds": tutorial,
        "tutorial_runs": [r["epoch_seconds"] for r in tut_runs],
        "tutorial_accuracy": tut_runs[0]["accuracy"],
        "project_threads": chosen,
        "project_seconds": best[chosen],
        "project_accuracy": accuracy,
        "project_by_threads": {str(t): by_threads(configs[t], runs[t], tutorial) for t in counts},
        "fastest_threads": min(counts, key=best.get),
        "ratio": tutorial / best[chosen],
    }


def rows(section: str, r: dict[str, Any]) -> list[Row]:
    """The table's rows for one section's epochs: the ratio, the other dtype, GFLOP/s, threads."""
    target = loops.TARGETS[section]
    note = f", {r['batches_timed']} batches timed" if r["extrapolated"] else ""
    out: list[Row] = [
        (
            f"{section.upper()} epoch ({r['train_samples']} images{note})",
            f"{fmt_s(r['tutorial_seconds'])} ({r['tutorial_threads']} thr)",
            f"{fmt_s(r['project_seconds'])} ({r['project_threads']} thr)",
            f"{r['ratio']:.1f}x",
            f">= {target:g}x",
            verdict(r["ratio"] >= target),
        )
    ]
    out += other_dtype_rows(r)
    for t, v in r["project_by_threads"].items():
        if int(t) != r["project_threads"]:
            seconds = f"{fmt_s(v['seconds'])} ({t} thr)"
            out.append(("  project, other threads", "", seconds, f"{v['ratio']:.1f}x", "", ""))
    return out


def other_dtype_rows(r: dict[str, Any]) -> list[Row]:
    """The forced other dtype against the chosen one, and each loop's GFLOP/s."""
    out: list[Row] = []
    v = r["project_other"]
    if v:
        # An explicit bf16 in params.yaml is checked the same way: is the default right here?
        chooser = "auto" if r["bf16_setting"] == "auto" else "params.yaml"
        out.append(
            (
                f"  project, {v['format']} forced ({chooser}: {r['format']})",
                "",
                f"{fmt_s(v['seconds'])} ({r['project_threads']} thr)",
                f"{v['ratio']:.1f}x",
                f"{chooser} <= {AUTO_TOLERANCE:g}x it",
                f"{verdict(v['auto_over_other'] <= AUTO_TOLERANCE)} ({v['auto_over_other']:.2f}x)",
            )
        )
    tut, pro = r["tutorial_arithmetic"], r["project_arithmetic"]
    mflop = pro["flops_per_sample"] / 1e6
    label = f"  achieved GFLOP/s ({mflop:.2f} MFLOP per sample)"
    out.append((label, flops.cell(tut), flops.cell(pro), "", "", ""))
    if v:
        label = f"  achieved GFLOP/s, {v['format']} forced"
        out.append((label, "", flops.cell(v["arithmetic"]), "", "", ""))
    return out


def run(section: str, args: argparse.Namespace, scale: float, reps: int) -> dict[str, Any]:
    """`measure` for `section` as the command line asks, on its synthetic data."""
    p = load_params(args.params)
    data = loops.load_synthetic(loops.DATASET[section], scale)
    batches = args.cnn_batches if section == "cnn" else None
    print(f"{section.upper()} epoch ...", flush=True)
    base = loops.timed_section(p, section)
    return measure(section, data, args.params, base, batches, reps, args.device, p.seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=["mlp", "cnn", "both"], default="both")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full data")
    parser.add_argument("--cnn-batches", type=int, default=40, help="CNN batches timed")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where both loops train")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/epochs.json")
    args = parser.parse_args()
    report = {"machine": machine(args.device), "results": {}, "table": []}
    print_machine(report["machine"])
    for section in ("mlp", "cnn") if args.section == "both" else (args.section,):
        result = run(section, args, args.scale, args.reps)
        report["results"][f"{section}_epoch"] = result
        report["table"] += rows(section, result)
    print_table(report["table"])
    save("epochs", report, args.json)


if __name__ == "__main__":
    main()
