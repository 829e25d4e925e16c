"""Every speed figure of the project in one run: tutorial vs project loops, PINN, evaluation, DVC.

    python benchmarks/run.py                  # full size, 3 repetitions (~10 min, 2 cores)
    python benchmarks/run.py --quick          # small data, 2 repetitions: a smoke run (~2 min)
    python benchmarks/run.py --only mlp,cnn --reps 5
    python benchmarks/run.py --dvc-repo .     # time `dvc repro` in this (already reproduced) repo

One process times, on the same data, each of several repetitions (training epochs: the best of
them, the loops alternated; the rest: the median):

- **MLP epoch**: the tutorial's loop (per-sample PIL transforms through a DataLoader, plain Adam,
  torch's default thread count; `train_speed.tutorial_epoch`) against the project's
  `train_classifier` with params.yaml's `mlp` section, on full-size synthetic MNIST generated in
  memory (`appliedtorch.data.synthetic.generate`).
- **CNN epoch**: the same for the CIFAR-10 CNN; both loops run `--cnn-batches` batches and the
  epoch time is extrapolated to the full 391-batch epoch (a full tutorial epoch takes minutes).
- The project's loop is timed with params.yaml's `threads`, with 1 thread and with torch's default
  (all cores), so the `threads` defaults can be checked on the machine that will run them.
- `bf16: auto` is decided as in the stage (the probe in `train_classifier`, cached per machine);
  where bf16 is native, the other dtype is timed too, forced: `auto` must be within 10 % of it.
- Each loop runs as it would for its user: the project's in this process, set up as a stage is
  (appliedtorch's OpenMP wait decided before torch loads: spin on a quiet machine, PASSIVE beside
  runnable processes, the environment's own setting kept; freed memory kept by
  `train_classifier`); the tutorial's in a process of its own with torch's defaults
  (`benchmarks/tutorial_loop.py`: OpenMP's default spinning, glibc's malloc as it comes).
- **Evaluation pass** over the 10,000 test images: the tutorial's DataLoader loop (`torch.no_grad`,
  batches of the training batch size) against `appliedtorch.classify.training.loop.evaluate`.
- **PINN**: params.yaml's recipe over 5 seeds (median max error and seconds) and the tutorial's
  recipe once (`pinn_seeds.run_once`).
- **What `auto` chooses** (`auto.probe`): `bf16: auto` and `threads: auto` probed on each default
  net and a real batch, uncached, with each candidate's seconds per step and the probe's cost.
- **`dvc repro` with nothing changed**: in a temporary git+DVC copy of the project reproduced once
  with full-size synthetic data and shrunk training (`--quick`: small data), or in `--dvc-repo`.

Prints a table with the ratios and targets and writes reports/benchmarks.json atomically.
Timings on a shared machine mean little: the load average at start and end is recorded.
"""

from __future__ import annotations

# ruff: noqa: E402 - the imports below follow the reading of the user's OMP_WAIT_POLICY
import os  # isort: skip

# The user's own setting, for the tutorial's loop (benchmarks/tutorial_loop.py), read before
# appliedtorch sets its default; then, as in the stages, appliedtorch before torch loads OpenMP.
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
from appliedtorch.machine import openmp  # isort: skip

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import contextlib
import dataclasses
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import unittest.mock
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader
from torchvision import transforms

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.params import ClassifierParams
from appliedtorch.classify.training import tuning
from appliedtorch.classify.training.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.training.loop import evaluate, model_args_for, net_name
from appliedtorch.core.utils import resolve_device, thread_count, write_json
from appliedtorch.data.loading import ImageData
from appliedtorch.machine.hardware import cpu_description, cpu_peak_gflops, native_bf16
from appliedtorch.params import load_params
from appliedtorch.pinn.params import PINNParams

sys.path.insert(0, str(Path(__file__).resolve().parent))
import auto  # the sibling benchmark scripts, reused
import flops  # noqa: E402
import pinn_seeds  # noqa: E402
import train_speed  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = {
    "mlp_epoch": 8.0,  # speed-up over the tutorial's loop, through the stage's defaults
    "cnn_epoch": 1.9,
    "pinn_max_error": 1e-7,  # median over 5 seeds
    "pinn_seconds": 10.0,
    "dvc_noop_seconds": 3.0,
}
# `bf16: auto` may be at most this much slower than forcing the other dtype.
AUTO_TOLERANCE = 1.10
SECTIONS = ("auto", "mlp", "cnn", "eval", "pinn", "dvc")


def median_of(run: Callable[[], float], reps: int) -> tuple[float, list[float]]:
    """Call `run` reps times; (median, all values)."""
    values = [run() for _ in range(reps)]
    return statistics.median(values), values


def thread_options(config: ClassifierParams, device: str) -> list[int]:
    """params.yaml's thread count first (`auto` and null: torch's default), then 1 and torch's
    default (all cores) where they differ."""
    default = torch.get_num_threads()
    first = config.threads if isinstance(config.threads, int) else default
    if device.startswith("cuda"):  # CPU threads barely matter to a GPU loop
        return [first]
    return list(dict.fromkeys([first, 1, default]))


def with_test_subset(data: ImageData, n: int) -> ImageData:
    """The same data with only the first n test images (evaluation cost out of training timings)."""
    return dataclasses.replace(
        data, test_images=data.test_images[:n], test_labels=data.test_labels[:n]
    )


# --------------------------------------------------------------------------------------------
# Training epochs

# Dense peak TFLOP/s of GPUs by name (vendor data sheets, SXM boards): fp32 without tensor cores
# and bf16 on tensor cores. A GPU not listed gets no percentage.
GPU_PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "bf16": 989.0},
    "H100": {"fp32": 67.0, "bf16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0},
}


def peak_gflops(device: str, fmt: str, threads: int) -> tuple[float | None, str]:
    """The machine's peak GFLOP/s for `fmt` (fp32 | bf16) on `device`, and how it was found."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peaks[fmt] * 1e3, f"{name}: {peaks[fmt]:g} TFLOP/s {fmt} (data sheet)"
        return None, f"{name}: peak unknown"
    return cpu_peak_gflops(fmt, threads)


def arithmetic(
    arch: str,
    data: ImageData,
    config: ClassifierParams,
    seconds: float,
    threads: int,
    fmt: str,
    device: str,
) -> dict[str, Any]:
    """Achieved GFLOP/s of an epoch of `seconds` (FLOPs counted by torch) against the peak."""
    per_sample = flops.train_flops_per_sample(
        net_name(config), model_args_for(config, data), tuple(data.train_images.shape[1:])
    )
    achieved = flops.achieved(per_sample, len(data.train_images), seconds)
    peak, how = peak_gflops(device, fmt, threads)
    return {
        "flops_per_sample": per_sample,
        "format": fmt,
        "gflops": achieved,
        "peak_gflops": peak,
        "peak_basis": how,
        "percent_of_peak": None if peak is None else 100 * achieved / peak,
    }


def tutorial_in_own_process(
    arch: str,
    data: ImageData,
    params: Path,
    batches: int | None,
    device: str,
    seed: int,
    accuracy: bool,
) -> dict[str, Any]:
    """One tutorial epoch in `benchmarks/tutorial_loop.py`, on the same synthetic data (made
    again there from the same seed), under the user's environment as it was before appliedtorch
    set its OpenMP default."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop(openmp.MARK, None)
    if USER_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = USER_OMP_WAIT_POLICY
    script = Path(__file__).resolve().parent / "tutorial_loop.py"
    cmd = [sys.executable, str(script), arch, "--train", str(len(data.train_images))]
    cmd += ["--test", str(len(data.test_images)), "--params", str(params), "--device", device]
    cmd += ["--seed", str(seed), *(["--batches", str(batches)] if batches else [])]
    cmd += ["--accuracy"] if accuracy else []
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the tutorial's loop failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def epoch_benchmark(
    arch: str,
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
    steps = math.ceil(len(data.train_images) / base.batch_size)
    counts = thread_options(base, device)
    chosen = counts[0]
    # Untimed warm-up of every configuration: oneDNN creates (and JITs) its kernels per shape and
    # format on first use, and a GPU loads its kernels; that belongs to no epoch. The first run
    # is also where `auto` is decided (and cached), as in the stage: its choice is then timed.
    # Its 3 batches would be too short a run to probe (tuning.PROBE_SHARE); the stage's run of
    # thousands of steps is not, so the warm-up decides as that run does.
    warm = with_test_subset(data, 256)
    formats = {}
    with unittest.mock.patch.object(tuning, "PROBE_SHARE", math.inf):
        for threads in counts:
            config = base.model_copy(update={"threads": threads})
            formats[threads] = train_speed.project_epoch(warm, config, 3, device, seed)[3]
    bf16 = formats[chosen]
    other = not bf16 if native_bf16(resolve_device(device)) else None
    configs: dict[Any, ClassifierParams] = {
        t: base.model_copy(update={"threads": t, "bf16": formats[t]}) for t in counts
    }
    if other is not None:
        configs["other"] = base.model_copy(update={"threads": chosen, "bf16": other})
        train_speed.project_epoch(warm, configs["other"], 3, device, seed)
    timed = data if batches is None else with_test_subset(data, 256)
    tutorial_runs: list[float] = []
    runs: dict[Any, list[float]] = {key: [] for key in configs}
    tutorial_acc = project_acc = None
    for rep in range(reps):
        # Alternate the loops so a change in machine load hits them alike.
        measure = rep == 0 and batches is None
        tut = tutorial_in_own_process(arch, data, params, batches, device, seed, measure)
        tutorial_runs.append(tut["seconds"] / tut["batches"] * steps)
        tutorial_acc = tut["accuracy"] if measure else tutorial_acc
        for key, config in configs.items():
            seconds, acc, done, _ = train_speed.project_epoch(timed, config, batches, device, seed)
            runs[key].append(seconds / done * steps)
            if rep == 0 and batches is None and key == chosen:
                project_acc = acc
    tutorial = min(tutorial_runs)
    best = {key: min(r) for key, r in runs.items()}
    fmt = "bf16" if bf16 else "fp32"
    project_other = None
    if other is not None:
        other_fmt = "bf16" if other else "fp32"
        project_other = {
            "format": other_fmt,
            "seconds": best["other"],
            "runs": runs["other"],
            "ratio": tutorial / best["other"],
            "auto_over_other": best[chosen] / best["other"],
            "arithmetic": arithmetic(arch, data, base, best["other"], chosen, other_fmt, device),
        }
    return {
        "device": device,
        "format": fmt,
        "bf16_setting": base.bf16,
        "tutorial_arithmetic": arithmetic(
            arch, data, base, tutorial, tut["threads"], "fp32", device
        ),
        "project_arithmetic": arithmetic(arch, data, base, best[chosen], chosen, fmt, device),
        "project_other": project_other,
        "train_samples": len(data.train_images),
        "batch_size": base.batch_size,
        "batches_per_epoch": steps,
        "batches_timed": batches or steps,
        "extrapolated": batches is not None and batches < steps,
        "reps": reps,
        "tutorial_threads": tut["threads"],
        "tutorial_omp_wait_policy": tut["omp_wait_policy"],
        "tutorial_seconds": tutorial,
        "tutorial_runs": tutorial_runs,
        "tutorial_accuracy": tutorial_acc,
        "project_threads": chosen,
        "project_seconds": best[chosen],
        "project_accuracy": project_acc,
        "project_by_threads": {
            str(t): {
                "format": "bf16" if formats[t] else "fp32",
                "seconds": best[t],
                "runs": runs[t],
                "ratio": tutorial / best[t],
            }
            for t in counts
        },
        "fastest_threads": min(counts, key=best.get),
        "ratio": tutorial / best[chosen],
    }


# --------------------------------------------------------------------------------------------
# Evaluation pass


def tutorial_evaluation(model: torch.nn.Module, data: ImageData, batch_size: int) -> float:
    """The tutorial's test loop (DataLoader of PIL transforms, no_grad, .item() per batch); seconds."""
    mean, std = NORMALIZATION[data.name]
    dataset = train_speed.TutorialDataset(
        data.test_images.numpy(),
        data.test_labels.numpy(),
        transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]),
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    correct = total = 0
    start = time.perf_counter()
    with torch.no_grad():
        for images, labels in loader:
            outputs = model(images)
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return time.perf_counter() - start


def project_evaluation(model: torch.nn.Module, data: ImageData, config: ClassifierParams) -> float:
    """`appliedtorch.classify.training.loop.evaluate` as the training loop calls it; seconds."""
    mean, std = NORMALIZATION[data.name]
    normalizer = Normalizer(mean, std, "cpu", config.channels_last)
    test = Batches(data.test_images, data.test_labels, config.eval_batch_size, normalizer)
    with thread_count(config.threads):
        ev = evaluate(model, test)
    return ev.seconds


def eval_benchmark(
    arch: str, data: ImageData, base: ClassifierParams, reps: int, seed: int
) -> dict[str, Any]:
    """Tutorial vs project evaluation pass over the test set, same (untrained) weights."""
    torch.manual_seed(seed)
    tutorial_model = build_model(arch, **model_args_for(base, data))
    project_model = build_model(arch, **model_args_for(base, data))
    project_model.load_state_dict(tutorial_model.state_dict())
    if base.channels_last:
        project_model = project_model.to(memory_format=torch.channels_last)
    tutorial_runs, project_runs = [], []
    for _ in range(reps):
        tutorial_runs.append(tutorial_evaluation(tutorial_model, data, base.batch_size))
        project_runs.append(project_evaluation(project_model, data, base))
    tutorial, project = statistics.median(tutorial_runs), statistics.median(project_runs)
    return {
        "test_samples": len(data.test_images),
        "tutorial_batch_size": base.batch_size,
        "project_batch_size": base.eval_batch_size,
        "tutorial_seconds": tutorial,
        "tutorial_runs": tutorial_runs,
        "project_seconds": project,
        "project_runs": project_runs,
        "ratio": tutorial / project,
    }


# --------------------------------------------------------------------------------------------
# PINN


def pinn_benchmark(params_path: Path, seeds: int) -> dict[str, Any]:
    """params.yaml's PINN recipe over `seeds` seeds, the tutorial's recipe once."""
    cfg = load_params(params_path).pinn
    runs = [pinn_seeds.run_once(cfg, seed) for seed in range(seeds)]
    tutorial = pinn_seeds.run_once(PINNParams(num_threads=0), 0)  # as pinn_seeds does
    return {
        "seeds": seeds,
        "runs": runs,
        "max_error_median": statistics.median(r["max_abs_error"] for r in runs),
        "max_error_worst": max(r["max_abs_error"] for r in runs),
        "seconds_median": statistics.median(r["total_seconds"] for r in runs),
        "tutorial": tutorial,
    }


# --------------------------------------------------------------------------------------------
# dvc repro with nothing changed


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc_env(tracking_uri: str | None) -> dict[str, str]:
    """Environment for DVC subprocesses: this venv first on PATH, no analytics."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    for key, value in (("GIT_AUTHOR_NAME", "bench"), ("GIT_AUTHOR_EMAIL", "bench@invalid")):
        env.setdefault(key, value)
        env.setdefault(key.replace("AUTHOR", "COMMITTER"), value)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def make_workspace(ws: Path, quick: bool) -> dict[str, str]:
    """A git+DVC copy of the project (as tests/test_pipeline.py builds it), reproduced once."""
    ws.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, ws / name)
    for name in ("stages", "src"):
        shutil.copytree(
            REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    # Full-size synthetic data (what DVC hashes in a real workspace), training shrunk to seconds.
    sizes = {"mnist_train": 2000, "mnist_test": 500, "cifar10_train": 1000, "cifar10_test": 300}
    overrides = {
        "device": "cpu",
        "data": {"source": "synthetic", **({"synthetic": sizes} if quick else {})},
        "mlp": {"epochs": 1, "train_limit": 1000},
        "cnn": {"epochs": 1, "train_limit": 500},
        "pinn": {"adam_steps": 300, "lbfgs_steps": 50},
    }
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dvc_env(f"sqlite:///{ws / 'mlflow.db'}")
    dvc = str(BIN / "dvc")
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        [dvc, "init", "-q"],
        [dvc, "config", "core.analytics", "false"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "benchmark workspace"],
    ):
        _run(cmd, ws, env)
    print(f"  reproducing the pipeline once in {ws} (minutes) ...", flush=True)
    _run([dvc, "repro"], ws, env)
    return env


@contextlib.contextmanager
def dvc_workspace(args: argparse.Namespace) -> Iterator[tuple[Path, dict[str, str]]]:
    """The workspace to time: --dvc-repo as is, --workspace (kept, built if new), or a temp one."""
    if args.dvc_repo:
        repo, env = args.dvc_repo.resolve(), dvc_env(None)
        status = _run([str(BIN / "dvc"), "status"], repo, env).stdout
        if "up to date" not in status:  # a timed `dvc repro` would train for real
            raise SystemExit(f"--dvc-repo {repo}: not up to date; run `dvc repro` there first")
        yield repo, env
        return
    if args.workspace:
        ws = args.workspace.resolve()
        env = dvc_env(f"sqlite:///{ws / 'mlflow.db'}")
        if not (ws / "dvc.lock").exists():
            env = make_workspace(ws, args.quick)
        yield ws, env
        return
    with tempfile.TemporaryDirectory(prefix="appliedtorch-bench-") as tmp:
        ws = Path(tmp) / "ws"
        yield ws, make_workspace(ws, args.quick)


def dvc_benchmark(args: argparse.Namespace, reps: int) -> dict[str, Any]:
    """Seconds of `dvc repro` when nothing changed (one untimed warm-up run first)."""
    with dvc_workspace(args) as (ws, env):
        dvc = str(BIN / "dvc")
        _run([dvc, "repro"], ws, env)  # warm-up: OS file cache, DVC's state database
        runs, did_work = [], False
        for _ in range(reps):
            start = time.perf_counter()
            proc = _run([dvc, "repro"], ws, env)
            runs.append(time.perf_counter() - start)
            did_work |= "Running stage" in proc.stdout
        raw = ws / "data" / "raw"
        raw_bytes = (
            sum(f.stat().st_size for f in raw.rglob("*") if f.is_file()) if raw.exists() else 0
        )
    try:
        # ruamel.yaml.clib: DVC's YAML parsing in C (dvc.yaml, dvc.lock, params.yaml, 13 parses
        # per repro); measured 1.5 s instead of 1.8 s for a no-op repro on the quiet 2-core machine.
        import _ruamel_yaml  # noqa: F401

        c_yaml = True
    except ImportError:
        c_yaml = False
    return {
        "workspace": str(args.dvc_repo or args.workspace or "temporary"),
        "data_raw_bytes": raw_bytes,
        "seconds": statistics.median(runs),
        "runs": runs,
        "nothing_ran": not did_work,
        "ruamel_c_parser": c_yaml,
    }


# --------------------------------------------------------------------------------------------
# Report


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g} s" if x < 10 else f"{x:.1f} s"


def _gflops(a: dict[str, Any]) -> str:
    pct = (
        ""
        if a["percent_of_peak"] is None
        else f", {a['percent_of_peak']:.0f}% of {a['format']} peak"
    )
    return f"{a['gflops']:.1f} {a['format']}{pct}"


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows: (benchmark, tutorial, project, ratio, target, verdict)."""
    rows = []
    for arch in ("mlp", "cnn"):
        r = results.get(f"{arch}_epoch")
        if not r:
            continue
        target = TARGETS[f"{arch}_epoch"]
        note = f", {r['batches_timed']} batches timed" if r["extrapolated"] else ""
        rows.append(
            (
                f"{arch.upper()} epoch ({r['train_samples']} images{note})",
                f"{_fmt_s(r['tutorial_seconds'])} ({r['tutorial_threads']} thr)",
                f"{_fmt_s(r['project_seconds'])} ({r['project_threads']} thr)",
                f"{r['ratio']:.1f}x",
                f">= {target:g}x",
                "ok" if r["ratio"] >= target else "MISSED",
            )
        )
        if r.get("project_other"):
            v = r["project_other"]
            within = v["auto_over_other"] <= AUTO_TOLERANCE
            # An explicit bf16 in params.yaml is checked the same way: is the default right here?
            chooser = "auto" if r.get("bf16_setting") == "auto" else "params.yaml"
            rows.append(
                (
                    f"  project, {v['format']} forced ({chooser}: {r['format']})",
                    "",
                    f"{_fmt_s(v['seconds'])} ({r['project_threads']} thr)",
                    f"{v['ratio']:.1f}x",
                    f"{chooser} <= {AUTO_TOLERANCE:g}x it",
                    f"{'ok' if within else 'MISSED'} ({v['auto_over_other']:.2f}x)",
                )
            )
        if r.get("project_arithmetic"):
            tut, pro = r["tutorial_arithmetic"], r["project_arithmetic"]
            rows.append(
                (
                    f"  achieved GFLOP/s ({pro['flops_per_sample'] / 1e6:.2f} MFLOP per sample)",
                    _gflops(tut),
                    _gflops(pro),
                    "",
                    "",
                    "",
                )
            )
            if r.get("project_other"):
                rows.append(
                    (
                        f"  achieved GFLOP/s, {r['project_other']['format']} forced",
                        "",
                        _gflops(r["project_other"]["arithmetic"]),
                        "",
                        "",
                        "",
                    )
                )
        for t, v in r["project_by_threads"].items():
            if int(t) != r["project_threads"]:
                rows.append(
                    (
                        "  project, other threads",
                        "",
                        f"{_fmt_s(v['seconds'])} ({t} thr)",
                        f"{v['ratio']:.1f}x",
                        "",
                        "",
                    )
                )
    for arch in ("mlp", "cnn"):
        r = results.get(f"{arch}_eval")
        if r:
            rows.append(
                (
                    f"{arch.upper()} evaluation ({r['test_samples']} images)",
                    _fmt_s(r["tutorial_seconds"]),
                    _fmt_s(r["project_seconds"]),
                    f"{r['ratio']:.1f}x",
                    "",
                    "",
                )
            )
    r = results.get("pinn")
    if r:
        tut = r["tutorial"]
        err_ok = r["max_error_median"] <= TARGETS["pinn_max_error"]
        rows.append(
            (
                f"PINN max error (median of {r['seeds']} seeds)",
                f"{tut['max_abs_error']:.1e}",
                f"{r['max_error_median']:.1e}",
                f"{tut['max_abs_error'] / r['max_error_median']:.0f}x",
                f"<= {TARGETS['pinn_max_error']:g}",
                "ok" if err_ok else "MISSED",
            )
        )
        rows.append(
            (
                "PINN seconds (median)",
                _fmt_s(tut["total_seconds"]),
                _fmt_s(r["seconds_median"]),
                f"{tut['total_seconds'] / r['seconds_median']:.1f}x",
                f"<= {TARGETS['pinn_seconds']:g} s",
                "ok" if r["seconds_median"] <= TARGETS["pinn_seconds"] else "MISSED",
            )
        )
    r = results.get("dvc_noop")
    if r:
        ok = r["seconds"] <= TARGETS["dvc_noop_seconds"] and r["nothing_ran"]
        rows.append(
            (
                f"dvc repro, nothing changed ({r['data_raw_bytes'] / 1e6:.0f} MB data)",
                "",
                _fmt_s(r["seconds"]),
                "",
                f"<= {TARGETS['dvc_noop_seconds']:g} s",
                ("ok" if ok else "MISSED") + ("" if r["nothing_ran"] else " (a stage ran)"),
            )
        )
    return rows


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("benchmark", "tutorial", "project", "ratio", "target", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def auto_choices(scale: float) -> dict[str, Any]:
    """What `bf16: auto, threads: auto` chooses for each default net here, printed as it goes."""
    out = {}
    for arch in ("mlp", "cnn"):
        r = auto.probe(auto.default_net(arch, scale))
        steps = ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in r["step_seconds"].items())
        print(
            f"auto for {arch}: {r['choice']} (per step: {steps}; probe {r['probe_seconds']:.2f} s)"
        )
        out[arch] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the data, 2 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions per timing (default 3; quick: 2)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {SECTIONS}")
    parser.add_argument("--cnn-batches", type=int, help="CNN batches timed (default 40; quick: 8)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--dvc-repo", type=Path, help="time `dvc repro` here instead")
    parser.add_argument("--workspace", type=Path, help="keep (or reuse) the DVC workspace here")
    parser.add_argument("--json", type=Path, default=REPO / "reports" / "benchmarks.json")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where both loops train")
    args = parser.parse_args()
    only = set(args.only.split(","))
    if unknown := only - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    reps = args.reps or (2 if args.quick else 3)
    scale = 0.1 if args.quick else 1.0
    cnn_batches = args.cnn_batches or (8 if args.quick else 40)

    p = load_params(args.params)
    machine = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_default_threads": torch.get_num_threads(),
        "openmp_wait": openmp.decision().tag(),
        "cpu_model": cpu_description(),
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "load_average_start": os.getloadavg()[0],
        "quick": args.quick,
        "reps": reps,
    }
    cpu = machine["cpu_model"]
    print(
        f"CPU {cpu['model']} ({cpu['vendor']} family {cpu['family']}, {cpu['mhz']} MHz), flags: "
        f"{' '.join(cpu['flags'])}; native bf16: {cpu['native_bf16']}"
        + (f"; GPU {machine['gpu']}" if machine["gpu"] else "")
    )
    print(
        f"torch {machine['torch']}, {machine['cpu_count']} CPUs ({machine['cpu_capability']}), "
        f"{machine['torch_default_threads']} default threads, "
        f"OpenMP threads wait: {machine['openmp_wait']}, load average "
        f"{machine['load_average_start']:.2f}; {reps} repetitions: epochs best of them, "
        "alternated; evaluation and PINN medians"
    )
    results: dict[str, Any] = {}
    started = time.perf_counter()
    if "auto" in only:
        results["auto"] = auto_choices(scale)
    for arch in ("mlp", "cnn"):
        if arch not in only and "eval" not in only:
            continue
        data = train_speed.load_synthetic(train_speed.DATASET[arch], scale)
        base = train_speed.timed_section(p, arch)
        if arch in only:
            print(f"{arch.upper()} epoch ...", flush=True)
            batches = cnn_batches if arch == "cnn" else None
            results[f"{arch}_epoch"] = epoch_benchmark(
                arch, data, args.params, base, batches, reps, args.device, p.seed
            )
        if "eval" in only:
            print(f"{arch.upper()} evaluation ...", flush=True)
            results[f"{arch}_eval"] = eval_benchmark(arch, data, base, reps, p.seed)
    if "pinn" in only:
        print("PINN (5 seeds + the tutorial's recipe) ...", flush=True)
        results["pinn"] = pinn_benchmark(args.params, seeds=5)
    if "dvc" in only:
        print("dvc repro with nothing changed ...", flush=True)
        results["dvc_noop"] = dvc_benchmark(args, max(reps, 3))
    machine["load_average_end"] = os.getloadavg()[0]
    machine["seconds"] = time.perf_counter() - started
    rows = table(results)
    print()
    print_table(rows)
    print(
        f"\nload average {machine['load_average_start']:.2f} -> {machine['load_average_end']:.2f}"
    )
    for arch in ("mlp", "cnn"):
        r = results.get(f"{arch}_epoch")
        if r and r["fastest_threads"] != r["project_threads"]:
            print(
                f"note: {arch}.threads = {r['fastest_threads']} was faster here than "
                f"{r['project_threads']} (params.yaml)"
            )
    write_json(
        args.json,
        {
            "machine": machine,
            "targets": TARGETS,
            "results": results,
            "table": [list(r) for r in rows],
        },
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
