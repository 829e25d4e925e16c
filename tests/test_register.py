"""The `register` stage: trained classifiers registered after their outputs landed, no retraining.

Each case logs "training runs" the way the training stage does (params, metrics.json as an
artifact, an exported model) into a temporary sqlite store, writes the workspace's
reports/mlp/metrics.json, runs stages/register.py in this process and reads the registry.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from appliedtorch.core.params import run_params
from appliedtorch.params import load_params
from appliedtorch.tracking.run import stage_run
from helpers import REPO, merge
from helpers.models import tiny_model_file
from helpers.stage_runs import one_error_line

NAME = "mnist-mlp"  # params.yaml's mlp.dataset is mnist: mlp.experiment
ARGS = ["--classifier", "mlp", "reports/mlp/metrics.json", "models/mlp.pt"]
EXAMPLE = np.zeros((4, 1, 28, 28), dtype=np.uint8)


class Tiny(torch.nn.Module):
    """A pixel classifier small enough to export in a second."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x.float().flatten(1)), dim=1)


@pytest.fixture
def ws(tmp_path: Path, tracking_uri: str, monkeypatch) -> Path:
    """A workspace (cwd) with params.yaml (register_models as the repository's) and a store."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "reports" / "mlp").mkdir(parents=True)
    tiny_model_file(tmp_path / "models" / "mlp.pt")  # the file beside the run: finite weights
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train_run(ws: Path, accuracy: float, seconds: float, model: bool = True) -> tuple[str, bytes]:
    """A finished run as train_mlp logs it; (run id, the metrics.json bytes it logged)."""
    metrics = {"test_accuracy": accuracy, "train_seconds": seconds}
    staged = ws / "staged" / "metrics.json"
    staged.parent.mkdir(exist_ok=True)
    staged.write_text(json.dumps(metrics, indent=2) + "\n")
    params = run_params(load_params(ws / "params.yaml"), "mlp")
    tags = {"data.mnist.md5": "0123abcd.dir", "data.source": "synthetic"}
    with stage_run(NAME, "train_mlp", params, tags=tags) as run:
        run.log_artifacts([staged])
        if model:
            run.log_model(Tiny().eval(), "model", EXAMPLE, metadata={"classes": list("0123456789")})
    return run.run_id, staged.read_bytes()


def land(ws: Path, metrics: bytes) -> None:
    """The training stage's outputs land: the workspace's metrics.json is the run's."""
    (ws / "reports" / "mlp" / "metrics.json").write_bytes(metrics)


def versions(client: mlflow.MlflowClient) -> dict[str, str]:
    """{version: its run_id tag} of the registered model."""
    return {
        str(v.version): v.tags.get("run_id") for v in client.search_model_versions(f"name='{NAME}'")
    }


def register(monkeypatch, capsys) -> tuple[int, str]:
    """Run stages/register.py in this process; (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["register.py", "--params", "params.yaml", *ARGS])
    capsys.readouterr()
    code = 0
    try:
        runpy.run_path(str(REPO / "stages" / "register.py"), run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


def test_registers_the_trained_model_once_and_moves_champion(ws, tracking_uri, monkeypatch, capsys):
    run_id, metrics = train_run(ws, accuracy=0.5, seconds=1.0)
    land(ws, metrics)
    assert register(monkeypatch, capsys)[0] == 0
    client = mlflow.MlflowClient(tracking_uri)
    assert versions(client) == {"1": run_id}
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert client.get_run(run_id).data.tags["registry.version"] == "1"
    # Again, the same model: no second version (the version carries its run's id).
    assert register(monkeypatch, capsys)[0] == 0
    assert versions(client) == {"1": run_id}


def test_a_normal_registration_prints_no_mlflow_warning(
    ws, tracking_uri, monkeypatch, capsys, caplog
):
    """The model is registered from its logged-model URI: MLflow's "has no artifacts at artifact
    path 'model'" WARNING (what `runs:/<id>/model` gives) reads like a failure."""
    run_id, metrics = train_run(ws, accuracy=0.5, seconds=1.0)
    land(ws, metrics)
    code, err = register(monkeypatch, capsys)
    assert code == 0, err
    said = err + caplog.text
    assert "WARNING" not in said and "has no artifacts" not in said, said
    version = mlflow.MlflowClient(tracking_uri).get_model_version(NAME, "1")
    assert version.run_id == run_id and version.source.startswith("models:/m-"), version


def test_registers_the_run_whose_outputs_landed(ws, tracking_uri, monkeypatch, capsys):
    """A later run with the same params whose outputs did not land is not registered; a better
    model that landed becomes champion."""
    first, first_metrics = train_run(ws, accuracy=0.5, seconds=1.0)
    train_run(ws, accuracy=0.9, seconds=2.0, model=False)  # its outputs never landed
    land(ws, first_metrics)
    assert register(monkeypatch, capsys)[0] == 0
    client = mlflow.MlflowClient(tracking_uri)
    assert versions(client) == {"1": first}
    better, better_metrics = train_run(ws, accuracy=0.75, seconds=3.0)
    land(ws, better_metrics)
    assert register(monkeypatch, capsys)[0] == 0
    assert versions(client) == {"1": first, "2": better}
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"


def test_nothing_registered_when_registration_is_off(ws, tracking_uri, monkeypatch, capsys):
    params = merge(
        yaml.safe_load((ws / "params.yaml").read_text()), {"tracking": {"register_models": False}}
    )
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _, metrics = train_run(ws, accuracy=0.5, seconds=1.0, model=False)
    land(ws, metrics)
    code, err = register(monkeypatch, capsys)
    assert code == 0 and "error" not in err
    assert mlflow.MlflowClient(tracking_uri).search_registered_models() == []


def test_a_model_without_its_run_is_one_line(ws, tracking_uri, monkeypatch, capsys):
    train_run(ws, accuracy=0.5, seconds=1.0, model=False)
    land(ws, b'{"test_accuracy": 0.5, "train_seconds": 9.0}\n')  # trained elsewhere
    code, err = register(monkeypatch, capsys)
    assert code == 1
    assert "no finished MLflow run in experiment 'mnist-mlp'" in one_error_line(err)
    assert "Downloading artifacts" not in err  # MLflow's progress bars: not on a user's stderr
    assert mlflow.MlflowClient(tracking_uri).search_registered_models() == []
