"""End to end: the repository in a temporary git+DVC workspace, `dvc repro` with shrunk params.

Checks the outputs, the MLflow runs and that a second `dvc repro` has nothing to do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO

BIN = Path(sys.executable).parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "appliedtorch-tests",
    "GIT_AUTHOR_EMAIL": "tests@appliedtorch.invalid",
    "GIT_COMMITTER_NAME": "appliedtorch-tests",
    "GIT_COMMITTER_EMAIL": "tests@appliedtorch.invalid",
}

# Small enough for CI, large enough that every stage does real work.
SHRUNK = {
    "device": "cpu",
    "data": {
        "source": "synthetic",
        "synthetic": {
            "mnist_train": 1200,
            "mnist_test": 300,
            "cifar10_train": 600,
            "cifar10_test": 200,
        },
    },
    "mlp": {"epochs": 2, "train_limit": 1000},
    "cnn": {"epochs": 1, "train_limit": 500},
    "pinn": {"adam_steps": 300, "lbfgs_steps": 50},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def make_workspace(root: Path, overrides: dict, tracking_uri: str) -> tuple[Path, dict]:
    """Copy the project into a fresh git+DVC repository; return it and the env to run DVC in."""
    ws = root / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, ws / name)
    for name in ("stages", "src"):
        shutil.copytree(
            REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        **GIT_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DVC_NO_ANALYTICS": "1",
    }
    run(["git", "init", "-q", "-b", "main"], ws, env)
    run([str(BIN / "dvc"), "init", "-q"], ws, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], ws, env)
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "workspace"], ws, env)
    return ws, env


@pytest.mark.slow
def test_repro_math_and_pinn_then_nothing_to_do(tmp_path, tracking_uri):
    ws, env = make_workspace(tmp_path, SHRUNK, tracking_uri)
    dvc = str(BIN / "dvc")
    run([dvc, "repro", "math_demos", "pinn"], ws, env)

    math = json.loads((ws / "reports/math/metrics.json").read_text())
    assert math["max_error"] < 1e-6
    pinn = json.loads((ws / "reports/pinn/metrics.json").read_text())
    assert pinn["max_abs_error"] < 1e-2
    for png in ("math/gradient_descent.png", "math/fft_spectrum.png", "pinn/solution.png"):
        assert (ws / "reports" / png).stat().st_size > 1000
    assert (ws / "models/pinn.pt").exists()

    client = mlflow.MlflowClient(tracking_uri)
    for experiment, stage in (("math-demos", "math_demos"), ("pinn-ode", "pinn")):
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert len(runs) == 1
        assert runs[0].info.status == "FINISHED"
        assert runs[0].data.tags["dvc.stage"] == stage
        assert runs[0].data.params["seed"] == "42"

    again = run([dvc, "repro", "math_demos", "pinn"], ws, env)
    assert "Running stage" not in again.stdout, again.stdout
    assert (
        run([dvc, "status", "math_demos", "pinn"], ws, env)
        .stdout.strip()
        .endswith("Data and pipelines are up to date.")
    )
