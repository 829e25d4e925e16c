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
from test_pipeline import BIN, make_workspace, run, run_queue

SWEEP = (0.02, 0.05)


@pytest.mark.slow
def test_queued_sweep_is_one_mlflow_run_per_experiment_in_the_workspace_db(
    tmp_path, mlflow_template_db
):
    ws, env = make_workspace(tmp_path, {"device": "cpu"}, tracking_uri="unused")
    del env["MLFLOW_TRACKING_URI"]  # the point: only the relative path in params.yaml
    # Only the cheap stage, so that `dvc exp apply` finds every output of the pipeline.
    pipeline = yaml.safe_load((ws / "dvc.yaml").read_text())
    pipeline = {"stages": {"math_demos": pipeline["stages"]["math_demos"]}}
    (ws / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run(["git", "commit", "-qam", "math_demos only"], ws, env)
    shutil.copy(mlflow_template_db, ws / "mlflow.db")  # git-ignored; skips the schema migration
    dvc = str(BIN / "dvc")
    head = run(["git", "rev-parse", "HEAD"], ws, env).stdout.strip()

    names = {}
    for lr in SWEEP:
        out = run([dvc, "exp", "run", "--queue", "-S", f"math.gd_lr={lr}", "math_demos"], ws, env)
        names[lr] = re.search(r"Queued experiment '([^']+)'", out.stdout).group(1)
    status = run_queue(ws, env, jobs=1, timeout=600)
    for name in names.values():
        assert re.search(rf"{name}\s.*Success", status), status

    # Both runs are in the workspace database; none was left in a temporary copy.
    assert not list((ws / ".dvc").rglob("mlflow.db"))
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("math-demos")
    runs = {r.data.tags["dvc.exp_name"]: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == sorted(names.values())
    for lr, name in names.items():
        r = runs[name]
        assert r.info.status == "FINISHED"
        assert float(r.data.params["math.gd_lr"]) == lr
        assert r.data.tags["git.commit"] == head == r.data.tags["dvc.exp_baseline"]
        assert r.data.tags["git.dirty"] == "false"
        assert r.info.run_name == f"math_demos@{name}"
    steps = {lr: runs[name].data.metrics["gd.steps"] for lr, name in names.items()}
    assert steps[SWEEP[0]] > steps[SWEEP[1]]  # a larger step converges in fewer steps

    # From a run back to its exact state: `dvc exp apply <dvc.exp_name>`.
    chosen = runs[names[SWEEP[0]]]
    run([dvc, "exp", "apply", chosen.data.tags["dvc.exp_name"]], ws, env)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert params["math"]["gd_lr"] == SWEEP[0]
    applied = json.loads((ws / "reports/math/metrics.json").read_text())
    logged = mlflow.artifacts.download_artifacts(
        run_id=chosen.info.run_id,
        artifact_path="metrics.json",
        dst_path=str(tmp_path / "logged"),
        tracking_uri=f"sqlite:///{ws / 'mlflow.db'}",
    )
    assert json.loads(Path(logged).read_text()) == applied


GRID = (0.003, 0.03, 0.3)
TINY_MLP = {
    "device": "cpu",
    "data": {"source": "synthetic", "synthetic": {"mnist_train": 400, "mnist_test": 100}},
    "mlp": {"epochs": 1, "train_limit": 300, "hidden_size": 16},
}


def exp_show_metrics(shown: list, file: str) -> dict[str, dict]:
    """{experiment name: metrics of `file`} from `dvc exp show --json` (however deep the nesting)."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                metrics = node["data"].get("metrics") or {}
                if "data" in metrics.get(file, {}):  # the baseline has none: an `error`
                    found[node["name"]] = metrics[file]["data"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(shown)
    return found


@pytest.mark.slow
def test_grid_sweep_runs_in_parallel_shares_a_sweep_tag_and_agrees_with_dvc(
    tmp_path, mlflow_template_db
):
    """README's sweep: one `dvc exp run --queue -n <sweep> -S 'mlp.lr=choice(...)'`, then
    `dvc queue start -j 2`. Its MLflow runs carry `sweep=<sweep>` and the numbers `dvc exp show`
    reports."""
    ws, env = make_workspace(tmp_path, TINY_MLP, tracking_uri="unused")
    del env["MLFLOW_TRACKING_URI"]
    pipeline = yaml.safe_load((ws / "dvc.yaml").read_text())
    stages = {k: pipeline["stages"][k] for k in ("download", "train_mlp")}
    plots = [p for p in pipeline["plots"] if "cnn" not in str(p) and "pinn" not in str(p).lower()]
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages, "plots": plots}))
    shutil.copy(mlflow_template_db, ws / "mlflow.db")
    dvc = str(BIN / "dvc")
    run([dvc, "repro", "download@mnist"], ws, env)  # the data, once, in the shared cache
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "mnist only"], ws, env)

    grid = "mlp.lr=choice(" + ",".join(map(str, GRID)) + ")"
    out = run([dvc, "exp", "run", "--queue", "-n", "lr-grid", "-S", grid, "train_mlp"], ws, env)
    names = re.findall(r"Queued experiment '([^']+)'", out.stdout)
    assert sorted(names) == ["lr-grid-1", "lr-grid-2", "lr-grid-3"], out.stdout
    status = run_queue(ws, env, jobs=2, timeout=600)
    for name in names:
        assert re.search(rf"{name}\s.*Success", status), status

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("mnist-mlp")
    # The sweep is one filter (and one `Group by: sweep` in the UI) away.
    runs = client.search_runs([exp.experiment_id], filter_string="tags.sweep = 'lr-grid'")
    assert sorted(r.data.tags["dvc.exp_name"] for r in runs) == sorted(names)
    assert sorted(float(r.data.params["mlp.lr"]) for r in runs) == sorted(GRID)

    shown = json.loads(run([dvc, "exp", "show", "--json"], ws, env).stdout)
    dvc_metrics = exp_show_metrics(shown, "reports/mlp/metrics.json")
    for r in runs:
        ours = dvc_metrics[r.data.tags["dvc.exp_name"]]
        assert r.data.metrics["test_accuracy"] == ours["test_accuracy"]
        assert r.data.metrics["test_loss"] == ours["test_loss"]
    assert len({r.data.metrics["test_loss"] for r in runs}) == len(GRID)  # three distinct runs
