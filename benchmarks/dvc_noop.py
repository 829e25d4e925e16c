"""Seconds of `dvc repro` when nothing changed: what every `dvc repro` pays before any work.

    python benchmarks/dvc_noop.py --dvc-repo .          # this (already reproduced) repo
    python benchmarks/dvc_noop.py --workspace /tmp/bench-ws --quick

Without `--dvc-repo`, in a git+DVC copy of the project built by the tests' own
`helpers.repo.make_workspace` (tests/helpers/, imported from there, not copied) and reproduced
once with shrunk training: full-size synthetic data (what DVC hashes in a real workspace), or
the tests' small data with `--quick`. One untimed warm-up repro, then the median of `--reps`.
Writes reports/benchmarks/dvc_noop.json.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # this process trains nothing; the stages DVC starts decide for themselves

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import REPO, Row, fmt_s, machine, print_machine, print_table, save, verdict

# The tests' helpers are a package in tests/ (pytest puts that folder on sys.path for the suite);
# a benchmark puts it there itself, so both build the workspace with the same code.
sys.path.insert(0, str(REPO / "tests"))
from helpers import BIN, merge
from helpers.repo import SHRUNK, make_workspace, run, workspace_env

TARGET_SECONDS = 3.0


def build(root: Path, quick: bool) -> tuple[Path, dict[str, str]]:
    """The tests' workspace under `root` (root/ws), reproduced once; (workspace, environment)."""
    overrides = merge(SHRUNK, {"mlp": {"epochs": 1}})
    if not quick:  # full-size synthetic data: the generator's upstream sizes
        overrides["data"] = {"source": "synthetic"}
    ws, env = make_workspace(root, overrides, tracking_uri=f"sqlite:///{root / 'ws' / 'mlflow.db'}")
    print(f"  reproducing the pipeline once in {ws} (minutes) ...", flush=True)
    run([str(BIN / "dvc"), "repro"], ws, env)
    return ws, env


@contextlib.contextmanager
def workspace(args: argparse.Namespace) -> Iterator[tuple[Path, dict[str, str]]]:
    """The workspace to time: --dvc-repo as is, --workspace (kept, built if new), or a temp one."""
    if args.dvc_repo:
        repo = args.dvc_repo.resolve()
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        if "up to date" not in run([str(BIN / "dvc"), "status"], repo, env).stdout:
            raise SystemExit(f"--dvc-repo {repo}: not up to date; run `dvc repro` there first")
        yield repo, env
    elif args.workspace:
        root = args.workspace.resolve()
        if (root / "ws" / "dvc.lock").exists():
            ws = root / "ws"
            yield ws, workspace_env(ws, f"sqlite:///{ws / 'mlflow.db'}")
        else:
            root.mkdir(parents=True, exist_ok=True)
            yield build(root, args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="appliedtorch-bench-") as tmp:
            yield build(Path(tmp), args.quick)


def measure(ws: Path, env: dict[str, str], reps: int) -> dict[str, Any]:
    """Seconds of `dvc repro` in `ws` when nothing changed (one untimed warm-up run first)."""
    dvc = str(BIN / "dvc")
    run([dvc, "repro"], ws, env)  # warm-up: OS file cache, DVC's state database
    runs, did_work = [], False
    for _ in range(reps):
        start = time.perf_counter()
        proc = run([dvc, "repro"], ws, env)
        runs.append(time.perf_counter() - start)
        did_work |= "Running stage" in proc.stdout
    raw = ws / "data" / "raw"
    files = raw.rglob("*") if raw.exists() else []
    try:
        # ruamel.yaml.clib: DVC parses its YAML (dvc.yaml, dvc.lock, params.yaml) in C
        import _ruamel_yaml  # noqa: F401

        c_yaml = True
    except ImportError:
        c_yaml = False
    return {
        "workspace": str(ws),
        "data_raw_bytes": sum(f.stat().st_size for f in files if f.is_file()),
        "seconds": statistics.median(runs),
        "runs": runs,
        "nothing_ran": not did_work,
        "ruamel_c_parser": c_yaml,
    }


def rows(r: dict[str, Any]) -> list[Row]:
    """One row: the median seconds against TARGET_SECONDS, and whether a stage ran."""
    ok = r["seconds"] <= TARGET_SECONDS and r["nothing_ran"]
    return [
        (
            f"dvc repro, nothing changed ({r['data_raw_bytes'] / 1e6:.0f} MB data)",
            "",
            fmt_s(r["seconds"]),
            "",
            f"<= {TARGET_SECONDS:g} s",
            verdict(ok) + ("" if r["nothing_ran"] else " (a stage ran)"),
        )
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The workspace options (run.py takes them too)."""
    parser.add_argument("--dvc-repo", type=Path, help="time `dvc repro` here instead")
    parser.add_argument("--workspace", type=Path, help="keep (or reuse) the workspace in DIR/ws")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="the tests' small synthetic data")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/dvc_noop.json")
    args = parser.parse_args()
    report: dict[str, Any] = {"machine": machine()}
    print_machine(report["machine"])
    with workspace(args) as (ws, env):
        result = measure(ws, env, args.reps)
    report.update(results={"dvc_noop": result}, table=rows(result))
    print_table(report["table"])
    save("dvc_noop", report, args.json)


if __name__ == "__main__":
    main()
