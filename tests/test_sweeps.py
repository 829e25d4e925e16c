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
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from test_pipeline import BIN, make_workspace, run

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
    try:
        run([dvc, "queue", "start"], ws, env)
        deadline = time.monotonic() + 600
        while True:
            status = run([dvc, "queue", "status"], ws, env).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        run([dvc, "queue", "stop"], ws, env, check=False)
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
