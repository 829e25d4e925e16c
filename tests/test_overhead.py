"""What cuts a stage's time outside its work (benchmarks/overhead.py measures it): the garbage
collector walks each object once, and MLflow's environment scan is skipped when logging a model."""

from __future__ import annotations

import atexit
import gc

from appliedtorch.core.cli import run_stage, survivors_frozen
from helpers import REPO


def test_survivors_of_a_full_collection_are_frozen_only_inside_the_block():
    kept = [object() for _ in range(100)]  # noqa: F841 - alive across the collection
    with survivors_frozen():
        gc.collect()
        inside = gc.get_freeze_count()
    assert inside > 0, "a full collection inside the block froze nothing"
    assert gc.get_freeze_count() == 0, "the collector is not as it was after the block"
    gc.collect()
    assert gc.get_freeze_count() == 0


def test_run_stage_leaves_one_freeze_at_exit_however_often_it_runs(monkeypatch):
    registered = []
    monkeypatch.setattr(atexit, "register", lambda f: registered.append(f))
    monkeypatch.setattr(
        atexit, "unregister", lambda f: registered.remove(f) if f in registered else None
    )
    for _ in range(3):
        run_stage(lambda: None, name="test")
    assert registered == [gc.freeze]
    assert gc.get_freeze_count() == 0


def test_logging_a_model_skips_mlflows_scan_of_installed_packages(monkeypatch):
    from mlflow.utils import environment

    from appliedtorch.tracking.handle import no_requirement_scan

    calls = []
    monkeypatch.setattr(environment, "warn_dependency_requirement_mismatches", calls.append)
    with no_requirement_scan():
        environment.warn_dependency_requirement_mismatches(["torch==0.0"])
    assert calls == []
    environment.warn_dependency_requirement_mismatches(["torch==0.0"])
    assert calls == [["torch==0.0"]], "the check is back after the block"


def test_a_logged_model_is_not_loaded_back_to_check_its_example(tracking_uri, monkeypatch):
    """log_model skips MLflow's serving check (a reload and a prediction, only to warn); the
    model it logs still loads and predicts the example."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import utils

    from appliedtorch.tracking.run import stage_run

    checks = []
    monkeypatch.setattr(utils, "_validate_serving_input", lambda *a, **k: checks.append(a))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.Softmax(1))
    example = np.ones((2, 1, 2, 2), dtype=np.float32)
    with stage_run("overhead", "train_mlp", {"seed": 1}, tracking_uri) as run:
        info = run.log_model(net.eval(), "model", example)
    assert checks == []
    predicted = mlflow.pyfunc.load_model(info.model_uri).predict(example)
    assert np.asarray(predicted).shape == (2, 3)


def test_the_benchmark_runs_each_stage_as_dvc_yaml_says(tmp_path):
    """benchmarks/overhead.py times each stage's cmd from dvc.yaml, params filled in, and takes
    a classifier's work from its metrics.json."""
    import json
    import shutil

    from benchmarks import overhead

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    commands = overhead.stage_commands(tmp_path)
    assert not any(s.startswith(("download", "data")) for s in commands), commands
    assert "--section mlp " in commands["train_mlp"], commands["train_mlp"]
    assert "${" not in " ".join(commands.values())
    (tmp_path / "reports" / "mlp").mkdir(parents=True)
    metrics = {"train_seconds": 7.0, "test_accuracy": 0.9}
    (tmp_path / "reports" / "mlp" / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "reports" / "mlp" / "details.json").write_text('{"eval_seconds": 0.5}')
    assert overhead.stage_work(tmp_path, "train_mlp", commands["train_mlp"]) == 7.5
    assert overhead.stage_work(tmp_path, "math_demos", commands["math_demos"]) == 0.0
