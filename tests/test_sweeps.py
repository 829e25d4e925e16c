"""Sweeps: queued `dvc exp run` experiments each log one MLflow run into the workspace's database.

Queued (and `--temp`) experiments run in a temporary copy of the repository without git-ignored
files; a relative `sqlite:///mlflow.db` would land in that copy and vanish with it. The stages
anchor it at DVC_ROOT instead (tracking.resolve_tracking_uri); this checks that end to end, with
no MLFLOW_TRACKING_URI in the environment, and that a run leads back to its exact state.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import BIN
from helpers.repo import make_workspace, run, run_queue

SWEEP = (0.02, 0.05)


@pytest.mark.slow
def test_queued_sweep_is_one_mlflow_run_per_experiment_in_the_workspace_db(
    tmp_path, mlflow_template_db
):
    ws, env = math_demos_workspace(tmp_path, mlflow_template_db)
    dvc = str(BIN / "dvc")
    head = run(["git", "rev-parse", "HEAD"], ws, env).stdout.strip()

    # README's grid: one `-n <sweep> -S 'key=choice(...)'`, run two at a time.
    grid = "math.gd_lr=choice(" + ",".join(map(str, SWEEP)) + ")"
    out = run([dvc, "exp", "run", "--queue", "-n", "gd-grid", "-S", grid, "math_demos"], ws, env)
    queued = re.findall(r"Queued experiment '([^']+)'", out.stdout)
    assert sorted(queued) == ["gd-grid-1", "gd-grid-2"], out.stdout
    status = run_queue(ws, env, jobs=2, timeout=600)
    for name in queued:
        assert re.search(rf"{name}\s.*Success", status), status

    # Both runs are in the workspace database; none was left in a temporary copy.
    assert not list((ws / ".dvc").rglob("mlflow.db"))
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("math-demos")
    runs = {r.data.tags["dvc.exp_name"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == sorted(queued)
    # The sweep is one filter (and one `Group by: sweep` in the UI) away.
    swept = client.search_runs([exp.experiment_id], filter_string="tags.sweep = 'gd-grid'")
    assert sorted(r.data.tags["dvc.exp_name"] for r in swept) == sorted(queued)
    names = {float(r.data.params["math.gd_lr"]): name for name, r in runs.items()}
    assert sorted(names) == sorted(SWEEP)
    for lr, name in names.items():
        r = runs[name]
        assert r.info.status == "FINISHED"
        assert float(r.data.params["math.gd_lr"]) == lr
        assert r.data.tags["git.commit"] == head == r.data.tags["dvc.exp_baseline"]
        assert r.data.tags["git.dirty"] == "false"
        assert r.info.run_name == f"math_demos@{name}"
    steps = {lr: runs[name].data.metrics["gd.steps"] for lr, name in names.items()}
    assert steps[SWEEP[0]] > steps[SWEEP[1]]  # a larger step converges in fewer steps
    check_mlflow_has_what_dvc_shows(ws, env, runs)
    check_exp_apply_restores_a_run(ws, env, runs[names[SWEEP[0]]], SWEEP[0], tmp_path / "logged")


def math_demos_workspace(tmp_path: Path, template_db: Path) -> tuple[Path, dict]:
    """A workspace whose pipeline is only the cheap math_demos stage (so that `dvc exp apply`
    finds every output), tracking into its own mlflow.db by params.yaml's relative path."""
    ws, env = make_workspace(tmp_path, {"device": "cpu"}, tracking_uri="unused")
    del env["MLFLOW_TRACKING_URI"]  # the point: only the relative path in params.yaml
    pipeline = yaml.safe_load((ws / "dvc.yaml").read_text())
    pipeline = {"stages": {"math_demos": pipeline["stages"]["math_demos"]}}
    (ws / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run(["git", "commit", "-qam", "math_demos only"], ws, env)
    shutil.copy(template_db, ws / "mlflow.db")  # git-ignored; skips the schema migration
    return ws, env


def check_mlflow_has_what_dvc_shows(ws: Path, env: dict, runs: dict) -> None:
    """MLflow has the numbers `dvc exp show` reports, experiment by experiment."""
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], ws, env).stdout)
    exps = {e["name"]: e for rev in shown for e in rev.get("experiments") or []}
    for name, r in runs.items():
        metrics = exps[name]["revs"][0]["data"]["metrics"]["reports/math/metrics.json"]["data"]
        assert r.data.metrics["max_error_digits"] == metrics["max_error_digits"]
        assert r.data.metrics["failed_demos"] == metrics["failed_demos"]


def check_exp_apply_restores_a_run(ws: Path, env: dict, chosen, lr: float, dst: Path) -> None:
    """From a run back to its exact state: `dvc exp apply <dvc.exp_name>` gives its params (its
    `lr`) and the metrics.json it logged."""
    run([str(BIN / "dvc"), "exp", "apply", chosen.data.tags["dvc.exp_name"]], ws, env)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["math"]["gd_lr"] == lr
    applied = json.loads((ws / "reports/math/metrics.json").read_text())
    logged = mlflow.artifacts.download_artifacts(
        run_id=chosen.info.run_id,
        artifact_path="metrics.json",
        dst_path=str(dst),
        tracking_uri=f"sqlite:///{ws / 'mlflow.db'}",
    )
    assert json.loads(Path(logged).read_text()) == applied
