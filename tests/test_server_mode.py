"""Server mode: a real stage logs into a real `mlflow server` (sqlite backend, proxied artifacts)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from helpers import run_script


@pytest.mark.slow
def test_math_demos_stage_logs_into_a_real_mlflow_server(
    tmp_path, mlflow_server, params_file, monkeypatch
):
    # The team setup: `tracking.uri: http://host:port` in params.yaml, no environment variable.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = params_file({"device": "cpu", "tracking": {"uri": mlflow_server}})
    reports = tmp_path / "reports" / "math"
    work = tmp_path / "work"
    work.mkdir()
    proc = run_script(
        "stages/math_demos.py", "--params", params, "--reports", reports, cwd=work, timeout=300
    )
    assert proc.returncode == 0, proc.stderr

    client = mlflow.MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("math-demos")
    assert exp is not None
    # Artifacts go through the server to its --artifacts-destination, not to a client-side path.
    assert exp.artifact_location.startswith("mlflow-artifacts:")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.stage"] == "math_demos"
    assert run.data.params["math.gd_lr"] == "0.01" and run.data.params["device"] == "cpu"
    metrics = json.loads((reports / "demos.json").read_text())  # beside the headline
    assert run.data.metrics["max_error"] == metrics["max_error"]
    assert run.data.metrics["gd.x"] == pytest.approx(2.25, abs=1e-9)

    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"metrics.json", "demos.json", "gradient_descent.png", "fft_spectrum.png"}
    got = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id,
        artifact_path="metrics.json",
        dst_path=str(tmp_path / "download"),
        tracking_uri=mlflow_server,
    )
    assert json.loads(Path(got).read_text()) == json.loads((reports / "metrics.json").read_text())
    stored = list((tmp_path / "server-artifacts").rglob("fft_spectrum.png"))
    assert len(stored) == 1
    assert stored[0].read_bytes() == (reports / "fft_spectrum.png").read_bytes()
    # Nothing was written beside the client: no local store, no local artifacts.
    assert sorted(p.name for p in work.iterdir()) == []
