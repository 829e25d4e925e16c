"""Several stages logging at once to one sqlite database and to one `mlflow server`: nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

WRITERS, STEPS = 4, 40

WRITER = """
import sys
from appliedtorch.tracking import stage_run
name = sys.argv[1]
with stage_run("concurrency", name, {"writer": name, "seed": 0}) as run:
    for step in range(int(sys.argv[2])):
        run.log_metrics({"loss": 1.0 / (step + 1), "step_seen": step}, step=step)
    run.log_metrics({"final": 1.0})
print(run.run_id)
"""


def run_writers(uri: str) -> list[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, f"writer{i}", str(STEPS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WRITERS)
    ]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        ids.append(out.strip().splitlines()[-1])
    return ids


def assert_nothing_lost(uri: str, run_ids: list[str]) -> None:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("concurrency")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    for r in runs:
        assert r.info.status == "FINISHED"
        history = client.get_metric_history(r.info.run_id, "step_seen")
        assert sorted(m.step for m in history) == list(range(STEPS))
        assert r.data.metrics["final"] == 1.0


@pytest.mark.slow
def test_concurrent_writers_to_one_sqlite_database(tracking_uri):
    ids = run_writers(tracking_uri)
    assert_nothing_lost(tracking_uri, ids)


@pytest.mark.slow
def test_concurrent_writers_to_one_server(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    ids = run_writers(mlflow_server)
    assert_nothing_lost(mlflow_server, ids)
