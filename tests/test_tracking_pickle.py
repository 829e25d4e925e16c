"""No MLflow model is unpickled: a pickled model that would run code is refused before it runs.

A pytorch-flavour model saved with `serialization_format="pickle"` runs its author's code when
MLflow loads it (MLflow 3 allows that by default). appliedtorch's models are exported programs
(pt2), so every load it makes (`load_logged_model`, behind `appliedtorch-predict --model
runs:/...`) turns pickle off. Here the model's `__reduce__` would create a marker file.
"""

from __future__ import annotations

import builtins
import subprocess
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import BIN

METADATA = {  # what a logged MNIST classifier carries, so predict's metadata gate lets it through
    "classes": [str(i) for i in range(10)],
    "mean": [0.1307],
    "std": [0.3081],
    "dataset": "mnist",
    "data_source": "synthetic",
    "input_shape": [1, 28, 28],
    "input_dtype": "uint8",
    "output": "probabilities",
}


class Trap(torch.nn.Module):
    """A module that pickles as a call: unpickling it opens (creates) `marker` for writing."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = str(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def __reduce__(self):  # noqa: D105 - the attack: any callable, any arguments
        return (builtins.open, (self.marker, "w"))


@pytest.fixture
def pickled_run(tmp_path: Path, tracking_uri: str) -> tuple[str, Path]:
    """(run id, marker path): a run in a temporary sqlite store whose `model` is a pickled Trap."""
    marker = tmp_path / "pwned"
    mlflow.set_tracking_uri(tracking_uri)
    # An experiment of this store: MLflow remembers the active one across tests.
    experiment_id = mlflow.MlflowClient(tracking_uri).create_experiment("pickle-trap")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.pytorch.log_model(
            Trap(marker),
            name="model",
            serialization_format="pickle",
            pip_requirements=["torch"],  # no inference: it would load (and so run) the model
            metadata=METADATA,
        )
    assert not marker.exists(), "logging the model already ran it: the test proves nothing"
    return run.info.run_id, marker


def test_predict_refuses_a_pickled_mlflow_model(pickled_run, tmp_path):
    run_id, marker = pickled_run
    image = tmp_path / "img.png"
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(image)
    proc = subprocess.run(
        [str(BIN / "appliedtorch-predict"), "--model", f"runs:/{run_id}/model", str(image)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert not marker.exists(), "the pickled model ran"
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pickle" in errors[0], proc.stderr
    assert proc.stdout == ""


def test_load_logged_model_refuses_pickle_even_when_allowed(pickled_run, monkeypatch):
    """MLflow's switch set to allow pickle in the environment does not reach the project's loads."""
    from appliedtorch.core.errors import TrackingError
    from appliedtorch.tracking.registry import load_logged_model

    run_id, marker = pickled_run
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "true")
    with pytest.raises(TrackingError, match="pickle"):
        load_logged_model(f"runs:/{run_id}/model")
    assert not marker.exists()
    import os

    assert os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "true"  # restored after
