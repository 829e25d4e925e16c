"""Several stages logging at once to one sqlite database and to one `mlflow server`: nothing lost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """A real `mlflow server` with a sqlite backend and artifacts in tmp_path, on 127.0.0.1."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((tmp_path / "server.log").read_text()[-2000:]) from None
            time.sleep(0.5)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_concurrent_writers_to_one_server(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    ids = run_writers(mlflow_server)
    assert_nothing_lost(mlflow_server, ids)
