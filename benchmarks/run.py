"""Every speed figure of the project in one run, one table: each measurement's module in turn.

    python benchmarks/run.py                  # full size, 3 repetitions (~10 min, 2 cores)
    python benchmarks/run.py --quick          # small data, 2 repetitions: a smoke run (~2 min)
    python benchmarks/run.py --only mlp,cnn --reps 5
    python benchmarks/run.py --dvc-repo .     # time `dvc repro` in this (already reproduced) repo

The sections, each a module of its own that runs alone too:

- `auto` (auto.py): what `bf16: auto` and `threads: auto` choose for each default net here.
- `mlp`, `cnn` (epochs.py): the tutorial's training epoch against the project's, per thread
  count, `auto`'s dtype against the other one forced, and the GFLOP/s of each (flops.py).
- `eval` (evaluation.py): one evaluation pass over the test set, both loops.
- `pinn` (pinn_seeds.py): params.yaml's PINN over 5 seeds against the tutorial's recipe.
- `dvc` (dvc_noop.py): `dvc repro` with nothing changed.

Prints the machine (CPU model and flags, the OpenMP wait decided, the load average) and one
table with the ratios and targets; writes reports/benchmarks/run.json and a line of
reports/benchmarks/history.jsonl (common.save). Timings on a shared machine mean little: the
load average at start and end is recorded.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import time
from pathlib import Path
from typing import Any

import auto
import dvc_noop
import epochs
import evaluation
import loops
import pinn_seeds
from appliedtorch.params import load_params
from common import REPO, Row, machine, print_machine, print_table, save

SECTIONS = ("auto", "mlp", "cnn", "eval", "pinn", "dvc")


def parse_args() -> argparse.Namespace:
    """The command line, with the quick run's defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1/10 of the data, 2 repetitions")
    parser.add_argument("--reps", type=int, help="repetitions per timing (default 3; quick: 2)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {SECTIONS}")
    parser.add_argument("--cnn-batches", type=int, help="CNN batches timed (default 40; quick: 8)")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/run.json")
    parser.add_argument("--device", default="cpu", help="cpu | cuda: where both loops train")
    dvc_noop.add_arguments(parser)
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if unknown := args.only - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}")
    args.reps = args.reps or (2 if args.quick else 3)
    args.scale = 0.1 if args.quick else 1.0
    args.cnn_batches = args.cnn_batches or (8 if args.quick else 40)
    return args


def measure_all(args: argparse.Namespace) -> tuple[dict[str, Any], list[Row]]:
    """Each section asked for, in order; (results by name, the table's rows)."""
    p = load_params(args.params)
    results: dict[str, Any] = {}
    table: list[Row] = []
    if "auto" in args.only:
        results["auto"] = auto.choices(args.scale)
    for section in ("mlp", "cnn"):
        if section in args.only:
            results[f"{section}_epoch"] = r = epochs.run(section, args, args.scale, args.reps)
            table += epochs.rows(section, r)
    for section in ("mlp", "cnn") if "eval" in args.only else ():
        print(f"{section.upper()} evaluation ...", flush=True)
        data = loops.load_synthetic(loops.DATASET[section], args.scale)
        config = loops.timed_section(p, section)
        results[f"{section}_eval"] = r = evaluation.measure(data, config, args.reps, p.seed)
        table += evaluation.rows(section, r)
    if "pinn" in args.only:
        print("PINN (5 seeds + the tutorial's recipe) ...", flush=True)
        results["pinn"] = r = pinn_seeds.measure(p.pinn, seeds=5)
        table += pinn_seeds.rows(r)
    if "dvc" in args.only:
        print("dvc repro with nothing changed ...", flush=True)
        with dvc_noop.workspace(args) as (ws, env):
            results["dvc_noop"] = r = dvc_noop.measure(ws, env, max(args.reps, 3))
        table += dvc_noop.rows(r)
    return results, table


def notes(results: dict[str, Any]) -> None:
    """A line for each section whose params.yaml thread count was not the fastest here."""
    for section in ("mlp", "cnn"):
        r = results.get(f"{section}_epoch")
        if r and r["fastest_threads"] != r["project_threads"]:
            print(
                f"note: {section}.threads = {r['fastest_threads']} was faster here than "
                f"{r['project_threads']} (params.yaml)"
            )


def main() -> None:
    args = parse_args()
    report: dict[str, Any] = {"machine": machine(args.device)}
    report["machine"].update(quick=args.quick, reps=args.reps)
    print_machine(report["machine"])
    print(f"{args.reps} repetitions: epochs best of them, alternated; the rest medians")
    started = time.perf_counter()
    results, table = measure_all(args)
    report["machine"]["seconds"] = time.perf_counter() - started
    print()
    print_table(table)
    notes(results)
    targets = {f"{s}_epoch": t for s, t in loops.TARGETS.items()}
    targets |= {f"pinn_{k}": v for k, v in pinn_seeds.TARGETS.items()}
    targets |= {"dvc_noop_seconds": dvc_noop.TARGET_SECONDS, "auto": epochs.AUTO_TOLERANCE}
    report.update(targets=targets, results=results, table=[list(r) for r in table])
    save("run", report, args.json)
    load = report["machine"]
    print(f"load average {load['load_average_start']:.2f} -> {load['load_average_end']:.2f}")


if __name__ == "__main__":
    main()
