"""`python -m appliedtorch.sweep`: a grid of experiments fanned out over a Ray cluster.

    python -m appliedtorch.sweep run lr --variant fast mlp.lr=0.01 --seeds 3 \
        -S mlp.train_limit=5000 --address 10.0.0.1:6379 --cpus 2
    python -m appliedtorch.sweep reproduce 3f2a...   # one run's experiment, trained again

`run` trains each variant (`--variant NAME KEY=VALUE...`, `--grid KEY=V1,V2`, `--recipe FILE`,
always `baseline`) at each of `--seeds N` seeds (params.yaml's `seed`, +1, ...) as one DVC
experiment `<sweep>-<variant>-s<seed>`, each in its own clone on whichever node Ray picks;
then pulls the experiments, prints the comparison (also in reports/sweeps/<sweep>/comparison.txt)
and ends the parent MLflow run whose children are the points' runs. Without --address it starts
a Ray instance on this machine for the sweep. Run it in the repository root, on a commit that is
pushed to the git remote, with a default DVC remote in .dvc/config (docs/team.md).

`reproduce RUN_ID` brings that run's experiment into this workspace (`dvc exp pull`, `dvc exp
apply`), trains its stage again (`dvc repro --force --single-item`) and checks that every
metric but the timings came out the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from appliedtorch.core import openmp
from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError, ParamsError


def parser() -> argparse.ArgumentParser:
    """The command line of both subcommands."""
    p = argparse.ArgumentParser(
        prog="python -m appliedtorch.sweep", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fan a grid of experiments out over Ray")
    run.add_argument("name", help="the sweep's name: experiments are <name>-<variant>-s<seed>")
    run.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME K=V")
    run.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2")
    run.add_argument("--recipe", type=Path, help="variants from a recipe (recipes/*.yaml)")
    run.add_argument("-S", "--set", dest="common", action="append", default=[], metavar="K=V")
    run.add_argument("--seeds", type=int, default=1, help="seeds per variant (default 1)")
    run.add_argument("--stage", action="append", default=[], help="DVC stage to train")
    run.add_argument("--address", help="Ray cluster to join (default: a local instance)")
    run.add_argument("--cpus", type=float, default=1.0, help="CPUs per point (torch threads)")
    run.add_argument("--gpus", type=float, default=0.0, help="GPU fraction per point")
    run.add_argument("--retries", type=int, default=3, help="retries of a point whose node died")
    run.add_argument("--local-cpus", type=int, help="CPUs of the local instance")
    run.add_argument("--git-remote", default="origin")
    run.add_argument("--clones", default="", help="where nodes clone (default: their tmp dir)")
    run.add_argument("--params", type=Path, default=Path("params.yaml"))
    run.add_argument("--out", type=Path, help="default: reports/sweeps/<name>")
    again = sub.add_parser("reproduce", help="train a run's experiment again, same numbers")
    again.add_argument("run_id")
    again.add_argument("--git-remote", default="origin")
    again.add_argument("--params", type=Path, default=Path("params.yaml"))
    return p


def plan_from(args: argparse.Namespace):  # -> driver.Plan
    """The checked sweep: grid, commit and remotes, tracking URI; one line for what is wrong."""
    from appliedtorch.core.params import read_yaml
    from appliedtorch.params import parse_params
    from appliedtorch.sweep import checks, grid
    from appliedtorch.sweep.driver import Plan
    from appliedtorch.tracking import resolve_tracking_uri

    if not 1 <= args.seeds <= 100 or not 0 < args.cpus <= 1024 or not 0 <= args.gpus <= 64:
        raise ParamsError("--seeds must be 1..100, --cpus in (0, 1024], --gpus in [0, 64]")
    root = Path.cwd()
    params = parse_params(read_yaml(args.params), args.params.name)
    table = grid.variant_table(args.variant, args.grid, args.recipe, args.params)
    stages = grid.stages_for(table, args.stage)
    seeds = [params.seed + k for k in range(args.seeds)]
    points = grid.grid(args.name, table, seeds, stages, args.common, args.cpus)
    commit = checks.committed_head(root)
    git_url = checks.git_remote(root, args.git_remote, commit)
    _, dvc_url = checks.dvc_remote(root)
    section = grid.SECTIONS[stages[0]]
    return Plan(
        root=root,
        points=points,
        commit=commit,
        git_remote=args.git_remote,
        git_url=git_url,
        dvc_url=dvc_url,
        tracking_uri=resolve_tracking_uri(params.tracking.uri, root),
        experiment=getattr(params, section).experiment,
        address=args.address,
        cpus=args.cpus,
        gpus=args.gpus,
        retries=args.retries,
        clones=args.clones,
        local_cpus=args.local_cpus,
    )


def run(args: argparse.Namespace) -> None:
    """Fan the sweep out, then print the comparison; exit 1 when a point failed."""
    from appliedtorch.sweep.driver import background_import, finish, run_sweep

    # MLflow (the parent run's) loads while the checks wait on git and DVC and Ray connects.
    background_import("mlflow", "mlflow.store.tracking.sqlalchemy_store")
    plan = plan_from(args)
    print(f"sweep {plan.points[0].sweep}: {len(plan.points)} points, commit {plan.commit[:12]}")
    outcome = run_sweep(plan)
    lines = finish(plan, outcome, args.out or Path("reports/sweeps") / args.name)
    print("\n".join(lines))
    print(f"trained {outcome.trained}; MLflow parent run {outcome.parent_id}")
    if outcome.failed:
        raise AppliedTorchError(
            f"{len(outcome.failed)} of {len(plan.points)} points failed: "
            + "; ".join(f"{name}: {line}" for name, line in outcome.failed.items())
        )


def reproduce(args: argparse.Namespace) -> None:
    """Bring a run's experiment back, train its stage again, compare the metrics."""
    from appliedtorch.core.params import read_yaml
    from appliedtorch.params import parse_params
    from appliedtorch.sweep import checks
    from appliedtorch.sweep.grid import SECTIONS
    from appliedtorch.sweep.results import pull
    from appliedtorch.tracking import resolve_tracking_uri
    from appliedtorch.tracking.sweep import run_lineage

    root = Path.cwd()
    checks.committed_head(root)  # `dvc exp apply` would overwrite uncommitted changes
    params = parse_params(read_yaml(args.params), args.params.name)
    try:
        lineage = run_lineage(resolve_tracking_uri(params.tracking.uri, root), args.run_id)
    except KeyError as exc:
        raise AppliedTorchError(
            f"run {args.run_id} has no tag {exc}: not a DVC experiment's run"
        ) from None
    name, stage = lineage["dvc.exp_name"], lineage["dvc.stage"]
    pull(root, args.git_remote, [name])
    dvc_ok(root, "exp", "apply", name)
    metrics = root / "reports" / SECTIONS[stage] / "metrics.json"
    before = json.loads(metrics.read_text())
    dvc_ok(root, "repro", "--force", "--single-item", stage)
    after = json.loads(metrics.read_text())
    numbers = [
        k for k, v in before.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    differ = [k for k in numbers if not k.endswith("seconds") and before[k] != after.get(k)]
    if differ:
        raise AppliedTorchError(f"{name} trained again differs in {', '.join(differ[:10])}")
    print(f"{name}: {stage} trained again, the same {len(numbers)} numbers (timings aside)")


def dvc_ok(root: Path, *args: str) -> None:
    """`dvc <args>`, or one line with DVC's error."""
    from appliedtorch.sweep.checks import dvc, last_line

    proc = dvc(root, *args)
    if proc.returncode != 0:
        reason = last_line(proc.stderr or proc.stdout, f"exit code {proc.returncode}")
        raise AppliedTorchError(f"dvc {' '.join(args[:2])} failed: {reason}")


def main(argv: list[str] | None = None) -> None:
    """Decide the OpenMP wait before torch loads, then run the subcommand."""
    openmp.settle()
    # `dvc` (recipes.shown_experiments runs it by name) from this interpreter's environment.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    run_stage(lambda: run(args) if args.command == "run" else reproduce(args), "sweep")
