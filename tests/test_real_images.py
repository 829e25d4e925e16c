"""Real images: the classifiers trained through their stages on Fashion-MNIST, as a user runs them.

Debian's `dataset-fashion-mnist` package (installed by .ci/run) holds the upstream files; the
download stage verifies them by content and the training stages train on all 60,000 real
training images (the MLP) or a real subset (the CNN). Synthetic stand-ins are learnt to 97-99 %
by every model, so only real images can tell a preprocessing bug or a bad recipe from a good one.
Thresholds are a margin below what was measured here (MLP 87.9 %, CNN 76.4 % on 8,000 images in
3 epochs, see docs/classifiers.md), far above chance (10 %).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliedtorch.data.datasets import DATASETS_BY_NAME
from appliedtorch.data.download.fetch import download
from helpers import run_script
from helpers.data import need_fashion_mnist

FASHION = DATASETS_BY_NAME["fashion-mnist"]


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/raw/fashion-mnist from the OS copy, through the project's verified download."""
    need_fashion_mnist()
    out = tmp_path_factory.mktemp("real") / "data" / "raw" / "fashion-mnist"
    record = download("fashion-mnist", out, "upstream")
    assert record["source"].startswith("debian:"), record["source"]
    return out


def train(kind: str, fashion_dir: Path, tmp_path: Path, params_file, section: dict) -> dict:
    """Run `stages/train.py --section <kind>` on the real images; its metrics.json, with
    per_class.json and run.json under "per_class" and "run"."""
    params = params_file({kind: {"dataset": "fashion-mnist", **section}})
    model, reports = tmp_path / "models" / f"{kind}.pt", tmp_path / "reports" / kind
    args = ["--params", params, "--data", fashion_dir, "--model", model, "--reports", reports]
    proc = run_script("stages/train.py", "--section", kind, *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert model.exists()
    metrics = json.loads((reports / "metrics.json").read_text())
    metrics |= json.loads((reports / "details.json").read_text())
    metrics["per_class"] = json.loads((reports / "per_class.json").read_text())
    metrics["run"] = json.loads((reports / "run.json").read_text())
    return metrics


@pytest.mark.slow
def test_tutorial_mlp_learns_real_fashion_mnist(fashion_dir, tmp_path, tracking_uri, params_file):
    metrics = train("mlp", fashion_dir, tmp_path, params_file, {})  # the tutorial's 5 epochs
    assert metrics["train_samples"] == 60000 and metrics["test_samples"] == 10000
    assert metrics["run"]["data_source"] == f"debian:{FASHION.os_dir}"
    assert metrics["test_accuracy"] >= 0.86, metrics["test_accuracy"]
    assert list(metrics["per_class"]["f1"]) == sorted(FASHION.classes)
    # Shirts look like T-shirts, coats and pullovers: the hardest class on real images.
    recall = metrics["per_class"]["recall"]
    assert min(recall, key=recall.get) == "Shirt", recall

    import mlflow

    (run,) = mlflow.search_runs(experiment_names=["fashion-mnist-mlp"], output_format="list")
    assert run.data.tags["data.source"].startswith("debian:")
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]


@pytest.mark.slow
def test_tutorial_cnn_on_real_fashion_mnist(fashion_dir, tmp_path, tracking_uri, params_file):
    # 8,000 real training images, 3 epochs: the CNN built for 1 x 28 x 28 inputs.
    metrics = train("cnn", fashion_dir, tmp_path, params_file, {"epochs": 3, "train_limit": 8000})
    assert metrics["train_samples"] == 8000
    assert metrics["test_accuracy"] >= 0.70, metrics["test_accuracy"]
    assert set(metrics["per_class"]["recall"]) == set(FASHION.classes)
