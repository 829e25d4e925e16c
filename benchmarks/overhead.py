"""Each stage's time outside its own work: start-up, MLflow, figures and files, model export, exit.

    python benchmarks/overhead.py                  # default params, upstream-size synthetic data
    python benchmarks/overhead.py --quick          # small data, one epoch: a smoke run (~3 min)
    python benchmarks/overhead.py --workspace /tmp/ovh --reps 3 --repro
    python benchmarks/overhead.py --only train_mlp --reps 3   # one stage (default params)
    python benchmarks/overhead.py --reps 0 --repro            # the whole `dvc repro` alone

Builds a git+DVC copy of the project (`data.source: synthetic`, device cpu; the datasets
downloaded once), then runs each stage's command from dvc.yaml in a process of its own, in
pipeline order, `--reps` times (the median is reported). For each run:

- **wall**: from starting the process to its exit, as `dvc repro` waits for it;
- **work**: what the stage reports as its own work: `train_seconds + eval_seconds` of a
  classifier's metrics.json, the PINN's `seconds`; nothing for the others;
- **overhead** = wall - work, split by the stage's MLflow run's own timestamps:
  `start` (process start to the run's start: imports, params, checks, data, MLflow's store),
  `in_run` (the rest of the run up to the model's logging: figures, files, the model-file
  check, metrics and artifacts), `model_log` (the logged model's creation to the run's end:
  export, signature, serving check) and `exit` (the run's end to the process's exit).

`--repro` also times `dvc repro` of every stage after the downloads (DVC's own work included)
against the sum of the work its stages report. Timings on a shared machine mean little: the load average
is recorded at start and end, and the CPU is named. Writes reports/overhead.json (or --json).
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads (this process only reads MLflow; the stages decide their own)

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from appliedtorch.core.utils import write_json
from appliedtorch.machine.hardware import cpu_description

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUICK_SIZES = {"mnist_train": 2000, "mnist_test": 500, "cifar10_train": 1000, "cifar10_test": 300}
PARTS = ("start", "in_run", "model_log", "exit")


def run(cmd: list[str] | str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `cmd` (a string: through the shell, as DVC runs a stage's cmd); stop on failure."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_workspace(ws: Path, quick: bool) -> dict[str, str]:
    """A git+DVC copy of the project with synthetic data downloaded; the env its stages run in
    (the copy's own code first on PYTHONPATH, its own mlflow.db)."""
    ws.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, ws / name)
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
    over: dict[str, Any] = {"device": "cpu", "data": {"source": "synthetic"}}
    if quick:
        over["data"]["synthetic"] = QUICK_SIZES
        over |= {"mlp": {"epochs": 1}, "cnn": {"epochs": 1, "train_limit": 500}}
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), over)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = stage_env(ws)
    dvc = str(BIN / "dvc")
    for cmd in (["git", "init", "-q", "-b", "main"], [dvc, "init", "-q"]):
        run(cmd, ws, env)
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "overhead benchmark"], ws, env)
    downloads = [s for s in stage_names(ws, env) if s.startswith("download")]
    print(f"  {ws}: {' '.join(downloads)} ...", flush=True)
    run([dvc, "repro", *downloads], ws, env)
    return env


def stage_env(ws: Path) -> dict[str, str]:
    """The environment the workspace's stages run in: its own code first, its own mlflow.db (the
    params' relative default), bytecode written as on a user's machine."""
    drop = ("MLFLOW_TRACKING_URI", "PYTHONDONTWRITEBYTECODE")
    git = {
        f"GIT_{who}_{what}": "bench"
        for who in ("AUTHOR", "COMMITTER")
        for what in ("NAME", "EMAIL")
    }
    return (
        {k: v for k, v in os.environ.items() if k not in drop}
        | git
        | {
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ws / "src"),
            "DVC_NO_ANALYTICS": "1",
        }
    )


def stage_names(ws: Path, env: dict[str, str]) -> list[str]:
    """The pipeline's stages in DVC's order (foreach items expanded)."""
    out = run([str(BIN / "dvc"), "stage", "list", "--name-only"], ws, env).stdout
    return out.split()


def stage_commands(ws: Path) -> dict[str, str]:
    """Each stage's cmd from dvc.yaml but the data stages' (`datasets`, `download@`, `data@`:
    foreach stages and the one before them), `${key.path}` filled in from params.yaml."""
    params = yaml.safe_load((ws / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        node: Any = params
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    stages = yaml.safe_load((ws / "dvc.yaml").read_text())["stages"]
    return {
        name: re.sub(r"\$\{([\w.-]+)\}", value, " ".join(str(body["cmd"]).split()))
        for name, body in stages.items()
        if "cmd" in body and name != "datasets"
    }


def stage_work(ws: Path, stage: str, cmd: str) -> float:
    """Seconds of the stage's own work, as its metrics.json and details.json report it (0 for
    the others)."""
    match = re.search(r"--reports (\S+)", cmd)
    metrics = ws / match.group(1) / "metrics.json" if match else None
    if metrics is None or not metrics.is_file():
        return 0.0
    m = json.loads(metrics.read_text())
    details = metrics.with_name("details.json")
    if details.is_file():
        m |= json.loads(details.read_text())
    if "train_seconds" in m:
        return m["train_seconds"] + m.get("eval_seconds", 0.0)
    return float(m.get("seconds", 0.0)) if stage.startswith("pinn") else 0.0


def mlflow_marks(ws: Path, stage: str, since: float) -> dict[str, float]:
    """Wall-clock marks of the stage's MLflow run that started after `since`: its start, the
    logged model's creation (if any) and its end; {} when it logged no run."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return {}
    runs = client.search_runs(
        ids,
        filter_string=f"tags.`dvc.stage` = '{stage}' and attributes.start_time >= {int(since * 1e3)}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        return {}
    info = runs[0].info
    marks = {"run_start": info.start_time / 1e3, "run_end": info.end_time / 1e3}
    models = client.search_logged_models(
        [info.experiment_id], filter_string=f"source_run_id = '{info.run_id}'"
    )
    if models:
        marks["model_created"] = min(m.creation_timestamp for m in models) / 1e3
    return marks


def time_stage(ws: Path, env: dict[str, str], stage: str, cmd: str) -> dict[str, float]:
    """One run of the stage's command: wall, work, overhead and its parts (seconds)."""
    start = time.time()
    run(cmd, ws, env)
    end = time.time()
    wall, work = end - start, stage_work(ws, stage, cmd)
    out = {"wall": wall, "work": work, "overhead": wall - work}
    marks = mlflow_marks(ws, stage, start)
    if marks:
        log_start = marks.get("model_created", marks["run_end"])
        out |= {
            "start": marks["run_start"] - start,
            "in_run": log_start - marks["run_start"] - work,
            "model_log": marks["run_end"] - log_start,
            "exit": end - marks["run_end"],
        }
    return out


def median_row(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def repro_benchmark(ws: Path, env: dict[str, str]) -> dict[str, float]:
    """`dvc repro` of every stage but the downloads (forced), against the work its own stages
    report (train and evaluation seconds, the PINNs' seconds) in the outputs it wrote."""
    stages = [s for s in stage_names(ws, env) if not s.startswith("download")]
    start = time.perf_counter()
    run([str(BIN / "dvc"), "repro", "--force", "--single-item", *stages], ws, env)
    seconds = time.perf_counter() - start
    work = sum(stage_work(ws, stage, cmd) for stage, cmd in stage_commands(ws).items())
    return {"seconds": seconds, "work": work, "ratio": seconds / work if work else None}


def show(results: dict[str, dict[str, float]]) -> None:
    def f(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    print(
        f"\n{'stage':12} {'wall':>6} {'work':>6} {'overh.':>6}  "
        + " ".join(f"{p:>9}" for p in PARTS)
    )
    for stage, r in results.items():
        parts = " ".join(f"{f(r.get(p)):>9}" for p in PARTS)
        print(f"{stage:12} {f(r['wall']):>6} {f(r['work']):>6} {f(r['overhead']):>6}  {parts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, one epoch")
    parser.add_argument("--reps", type=int, default=1, help="runs of each stage (median; 0: none)")
    parser.add_argument("--workspace", type=Path, help="build here (or reuse) instead of a temp")
    parser.add_argument("--repro", action="store_true", help="also time `dvc repro --force`")
    parser.add_argument("--json", type=Path, default=REPO / "reports" / "overhead.json")
    parser.add_argument("--only", help="comma-separated stages to time (default: every stage)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    cpu = cpu_description()
    machine = {"cpu": cpu["model"], "cores": cpu["cores"], "load_start": os.getloadavg()[0]}
    print(f"CPU {cpu['model']}, {cpu['cores']} cores, load average {machine['load_start']:.2f}")
    with tempfile.TemporaryDirectory(prefix="appliedtorch-overhead-") as tmp:
        ws = (args.workspace or Path(tmp) / "ws").resolve()
        env = stage_env(ws) if (ws / "dvc.yaml").exists() else make_workspace(ws, args.quick)
        results = {}
        for stage, cmd in stage_commands(ws).items():
            if args.reps < 1 or (only is not None and stage not in only):
                continue
            print(f"  {stage} x{args.reps} ...", flush=True)
            results[stage] = median_row([time_stage(ws, env, stage, cmd) for _ in range(args.reps)])
        repro = repro_benchmark(ws, env) if args.repro else None
    machine["load_end"] = os.getloadavg()[0]
    if results:
        show(results)
    if repro:
        print(
            f"\ndvc repro --force (no downloads): {repro['seconds']:.1f} s; work {repro['work']:.1f} s"
        )
    print(f"load average {machine['load_start']:.2f} -> {machine['load_end']:.2f}")
    write_json(
        args.json, {"machine": machine, "quick": args.quick, "stages": results, "repro": repro}
    )


if __name__ == "__main__":
    main()
