"""A workspace with no mlflow.db yet: stages and queued experiments that start together all land.

MLflow creates a sqlite database's schema on first use without a lock; two processes doing it at
once raced in its migrations (`duplicate column name: step`). `tracking.ensure_schema` does it
once, under a file lock beside the database, before any run starts.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import mlflow
import pytest
import yaml

from helpers import BIN, PYTHON, REPO
from helpers.repo import make_workspace, run, run_queue

TINY_PINN = {"adam_steps": 50, "lbfgs_steps": 10, "lm_steps": 20}


def runs_by_experiment(uri: str, *experiments: str) -> dict[str, list]:
    client = mlflow.MlflowClient(uri)
    out = {}
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        out[name] = client.search_runs([exp.experiment_id]) if exp else []
    return out


# Opens a tracking database at an agreed moment, so that the processes really overlap.
OPEN_AT = """
import sys, time
import mlflow
from appliedtorch.tracking import ensure_schema
uri, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
ensure_schema(uri)
mlflow.MlflowClient(uri).search_experiments()
"""


@pytest.mark.slow
def test_ensure_schema_lets_processes_open_a_new_database_at_once(tmp_path):
    """Without the lock this failed (`duplicate column name: step`, or an alembic_version error)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = str(time.time() + 8)  # after every process has imported mlflow
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", OPEN_AT, uri, start], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert mlflow.MlflowClient(uri).search_experiments()  # the Default experiment


@pytest.mark.slow
def test_two_stages_started_together_on_a_new_database(tmp_path, params_file):
    params = params_file({"device": "cpu", "pinn": TINY_PINN})
    db = tmp_path / "mlflow.db"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    commands = {
        "math_demos": ["--reports", tmp_path / "reports/math"],
        "pinn": ["--model", tmp_path / "models/pinn.pt", "--reports", tmp_path / "reports/pinn"],
    }
    assert not db.exists()
    procs = {
        stage: subprocess.Popen(
            [
                PYTHON,
                str(REPO / "stages" / f"{stage}.py"),
                "--params",
                str(params),
                *map(str, args),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for stage, args in commands.items()
    }
    for stage, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{stage}:\n{out}"

    runs = runs_by_experiment(f"sqlite:///{db}", "math-demos", "pinn-ode")
    for experiment, found in runs.items():
        assert [r.info.status for r in found] == ["FINISHED"], experiment


@pytest.mark.slow
def test_queued_experiments_started_together_on_a_new_database(tmp_path):
    ws, env = make_workspace(tmp_path, {"device": "cpu"}, tracking_uri="unused")
    del env[
        "MLFLOW_TRACKING_URI"
    ]  # the workspace's relative sqlite:///mlflow.db, anchored at DVC_ROOT
    pipeline = yaml.safe_load((ws / "dvc.yaml").read_text())
    pipeline = {"stages": {"math_demos": pipeline["stages"]["math_demos"]}}
    (ws / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    run(["git", "commit", "-qam", "math_demos only"], ws, env)
    dvc = str(BIN / "dvc")
    assert not (ws / "mlflow.db").exists()

    names = []
    for lr in (0.02, 0.05):
        out = run([dvc, "exp", "run", "--queue", "-S", f"math.gd_lr={lr}"], ws, env)
        names.append(re.search(r"Queued experiment '([^']+)'", out.stdout).group(1))
    status = run_queue(ws, env, jobs=2, timeout=400, kill=True)
    for name in names:
        assert re.search(rf"{name}\s.*Success", status), (
            status + run([dvc, "queue", "logs", name], ws, env, check=False).stdout
        )

    runs = runs_by_experiment(f"sqlite:///{ws / 'mlflow.db'}", "math-demos")["math-demos"]
    assert sorted(r.data.tags["dvc.exp_name"] for r in runs) == sorted(names)
    assert all(r.info.status == "FINISHED" for r in runs)
