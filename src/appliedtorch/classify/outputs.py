"""What a classifier run leaves behind: the model file (verified by reloading), metrics.json,
history.csv, confusion.json, four figures, and what MLflow gets (the model for export, its
input example and metadata, the final metrics).

    evaluation = save_verified_model(result, data, "models/mlp.pt")
    metrics, paths = write_reports(result, data, "reports/mlp")

One name per metric: metrics.json, MLflow and the report use the same keys. The per-epoch
metrics (`EpochStats.metrics`: train_loss, test_loss, test_accuracy, epoch_seconds, lr) are
logged with step=epoch; the run's other metrics are metrics.json flattened (`final_metrics`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from appliedtorch.classify.batches import Batches, Normalizer
from appliedtorch.classify.loop import EpochStats, Evaluation, TrainResult, evaluate
from appliedtorch.classify.models import load_model, save_model
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import atomic_path, flatten, thread_count

if TYPE_CHECKING:
    import pandas as pd

    from appliedtorch.data import ImageData

log = logging.getLogger(__name__)

# Logged once per epoch (step=epoch); the last epoch's values are metrics.json's.
EPOCH_METRICS = ("train_loss", "test_loss", "test_accuracy", "epoch_seconds", "lr")


def save_verified_model(result: TrainResult, data: ImageData, path: str | Path) -> Evaluation:
    """Save the model file, reload it and check it reproduces the test predictions.

    The file appears at `path` only if the reloaded model gives the same accuracy (the
    tutorial's "loaded model accuracy", made a check instead of a printout).
    """
    config = result.config
    device = next(result.model.parameters()).device
    limit = config.train_limit
    with atomic_path(path) as tmp:
        save_model(tmp, result.model, config.arch, result.model_args, **model_metadata(result, data),
                   test_accuracy=result.evaluation.accuracy)  # fmt: skip
        reloaded, _ = load_model(tmp)
        reloaded = reloaded.to(device)
        if config.channels_last:
            reloaded = reloaded.to(memory_format=torch.channels_last)
        normalize = Normalizer(result.mean, result.std, device, config.channels_last)
        test = Batches(data.test_images[:limit], data.test_labels[:limit],
                       config.eval_batch_size, normalize)  # fmt: skip
        with thread_count(config.threads):  # the thread count can change the last bits of a sum
            again = evaluate(reloaded, test, config.bf16)
        # Bit-identical on the CPU; a GPU may pick other kernels, so allow one sample in 1000.
        tolerance = 0.0 if device.type == "cpu" else 1e-3
        if abs(again.accuracy - result.evaluation.accuracy) > tolerance:
            raise AppliedTorchError(
                f"{path}: the reloaded model scores {again.accuracy:.4%}, the trained one "
                f"{result.evaluation.accuracy:.4%}; the model file does not reproduce the model"
            )
    log.info("saved %s (reloaded model accuracy %.2f%%)", path, 100 * again.accuracy)
    return again


def history_frame(history: Sequence[EpochStats]) -> pd.DataFrame:
    """The history as a table: epoch, then the per-epoch metrics under their MLflow names."""
    import pandas as pd

    cols = ["epoch", *EPOCH_METRICS]
    return pd.DataFrame([{c: getattr(h, c) for c in cols} for h in history], columns=cols)


def summary_metrics(result: TrainResult, source: str) -> dict[str, Any]:
    """metrics.json content; only the `*_seconds` values may differ between seeded CPU runs."""
    ev = result.evaluation
    per_class = ev.per_class_accuracy(len(result.classes))
    return {
        "test_accuracy": ev.accuracy,
        "test_loss": ev.loss,
        "train_loss": result.history[-1].train_loss,
        "epochs": len(result.history),
        "train_samples": result.train_samples,
        "test_samples": len(ev.labels),
        "per_class_accuracy": dict(zip(result.classes, per_class, strict=True)),
        "train_seconds": result.train_seconds,
        "mean_epoch_seconds": result.train_seconds / max(len(result.history), 1),
        "eval_seconds": result.eval_seconds,
        "data_source": source,
    }


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The run-level MLflow metrics: metrics.json flattened (`per_class_accuracy.cat`), less the
    per-epoch ones, whose last points already are these values."""
    return {k: v for k, v in flatten(metrics).items() if k not in EPOCH_METRICS}


def write_reports(
    result: TrainResult, data: ImageData, out_dir: str | Path
) -> tuple[dict[str, Any], list[Path]]:
    """Write metrics.json, history.csv, confusion.json and the four figures.

    Returns the metrics and the paths written."""
    from appliedtorch.classify import figures as plots
    from appliedtorch.core.plots import save_figure
    from appliedtorch.core.utils import write_json, write_text

    out = Path(out_dir)
    ev, classes = result.evaluation, result.classes
    title = f"{data.name}{' (synthetic data)' if data.source == 'synthetic' else ''}"
    history = history_frame(result.history)
    write_text(out / "history.csv", history.to_csv(index=False))
    # DVC's `confusion` template reads one record per sample.
    actual = [classes[i] for i in ev.labels.tolist()]
    predicted = [classes[i] for i in ev.predictions.tolist()]
    records = [{"actual": a, "predicted": p} for a, p in zip(actual, predicted, strict=True)]
    write_json(out / "confusion.json", records)
    test_images = data.test_images[: result.config.train_limit]
    figures = {
        "loss.png": plots.training_curves(history, title),
        "confusion_matrix.png": plots.confusion_heatmap(ev.confusion(len(classes)), classes, title),
        "per_class_accuracy.png": plots.per_class_accuracy_bars(
            ev.per_class_accuracy(len(classes)), classes, title
        ),
        "predictions.png": plots.prediction_grid(
            test_images, ev.predictions, ev.labels, classes, title
        ),
    }
    for name, fig in figures.items():
        save_figure(fig, out / name)
    metrics = summary_metrics(result, data.source)
    write_json(out / "metrics.json", metrics)  # last: it marks a complete run
    names = ["metrics.json", "history.csv", "confusion.json", *figures]
    return metrics, [out / name for name in names]


def portable_model(result: TrainResult) -> nn.Module:
    """A copy of the trained network on the CPU in the default memory format, for export.

    torch.export (MLflow's default format) warns about, and may mis-save, channels_last weights.
    """
    model = copy.deepcopy(result.model).to("cpu")
    return model.to(memory_format=torch.contiguous_format).eval()


def input_example(result: TrainResult, data: ImageData, n: int = 4) -> np.ndarray:
    """A few normalised test images as float32 numpy: what the logged model takes as input."""
    normalize = Normalizer(result.mean, result.std)
    return normalize(data.test_images[:n]).numpy().astype(np.float32)


def model_metadata(result: TrainResult, data: ImageData) -> dict[str, Any]:
    """What a user of the model needs besides the weights (read by `predict`).

    Saved in the model file in this order: keep it, or equal models give other bytes."""
    return {
        "classes": list(result.classes),
        "mean": list(result.mean),
        "std": list(result.std),
        "dataset": data.name,
        "data_source": data.source,
        "input_shape": list(data.test_images.shape[1:]),
    }
