"""What a classifier run leaves behind: the model file (verified by reloading), metrics.json (the
headline numbers), run.json (what describes the run), per_class.json, history.csv, confusion.json, members.csv, four figures, and what MLflow
gets (the model for export, its input example and metadata, the final metrics).

The model file and the logged model are a `PixelClassifier`: uint8 pixels in, probabilities out.

    write_outputs(result, data, run, model="models/mlp.pt", reports="reports/mlp")

One name per metric: metrics.json, MLflow and the report use the same keys. The per-epoch
metrics (`EpochStats.metrics`: train_loss, test_loss, test_accuracy, epoch_seconds, lr) are
logged with step=epoch; the run's other metrics are metrics.json's (`final_metrics`). Per-class
values live in per_class.json, so `dvc metrics show` and MLflow's metric tab show the headline.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from appliedtorch.classify.nets.models import PixelClassifier, load_model, save_model
from appliedtorch.classify.runs.ensemble import member_frame, member_metrics, seed_summary
from appliedtorch.classify.training.loop import net_name
from appliedtorch.classify.training.results import EpochStats, Evaluation, TrainResult
from appliedtorch.core import openmp
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import atomic_path, flatten, output_set, thread_count

if TYPE_CHECKING:
    import pandas as pd

    from appliedtorch.data.loading import ImageData

log = logging.getLogger(__name__)

# Logged once per epoch (step=epoch); the last epoch's values are metrics.json's.
EPOCH_METRICS = ("train_loss", "test_loss", "test_accuracy", "epoch_seconds", "lr")


def save_verified_model(result: TrainResult, data: ImageData, path: str | Path) -> Evaluation:
    """Save the model file, reload it and check it reproduces the test predictions.

    The file holds the network inside a `PixelClassifier`; the reloaded classifier is fed the raw
    uint8 test images, as a user would, and the file appears at `path` only if it predicts what
    the training-time evaluation did (the tutorial's "loaded model accuracy", made a check
    instead of a printout). Returns the reloaded classifier's evaluation.
    """
    config = result.config
    device = next(result.model.parameters()).device
    limit = config.train_limit
    trained = result.evaluation
    with atomic_path(path) as tmp:
        metadata = model_metadata(result, data)
        save_model(
            tmp,
            pixel_classifier(result),
            net_name(config),
            result.model_args,
            **metadata,
            test_accuracy=trained.accuracy,
        )
        reloaded, _ = load_model(tmp)
        reloaded = reloaded.to(device)
        if config.channels_last:  # as trained: the same kernels give the same bits
            reloaded = reloaded.to(memory_format=torch.channels_last)
            reloaded.memory_format = torch.channels_last
        with thread_count(result.threads):  # the thread count can change the last bits of a sum
            images, labels = data.test_images[:limit], data.test_labels[:limit]
            again = evaluate_pixels(reloaded, images, labels, config.eval_batch_size, result.bf16)
        differ = int((again.predictions != trained.predictions).sum())
        # The same predictions on the CPU; a GPU may pick other kernels: accuracy within 1/1000.
        cpu = device.type == "cpu"
        if differ if cpu else abs(again.accuracy - trained.accuracy) > 1e-3:
            raise AppliedTorchError(
                f"{path}: the reloaded model predicts otherwise than the trained one on {differ} "
                f"of {len(again.labels)} test images (accuracy {again.accuracy:.4%} against "
                f"{trained.accuracy:.4%}); the model file does not reproduce the model"
            )
    log.info("saved %s (reloaded model accuracy %.2f%%)", path, 100 * again.accuracy)
    return again


def pixel_classifier(result: TrainResult) -> PixelClassifier:
    """The trained network (where it is) with the training normalisation inside it."""
    return PixelClassifier(result.model, result.mean, result.std, result.config.channels_last)


def evaluate_pixels(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1024,
    bf16: bool = False,
) -> Evaluation:
    """Evaluate a pixel classifier (uint8 (N, C, H, W) in, probabilities out) on its device;
    the loss is the mean negative log-probability of the true class."""
    device = next(model.parameters()).device
    start = time.perf_counter()
    chunks = []
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for i in range(0, len(images), batch_size):
            chunks.append(model(images[i : i + batch_size].to(device)).float())  # (B, K)
    probs = torch.cat(chunks).cpu()  # (N, K)
    predictions = probs.argmax(dim=1)
    n = max(len(labels), 1)
    # A probability that underflowed to 0 counts as the smallest float32, not as infinity.
    true_class = probs.gather(1, labels.view(-1, 1)).clamp_min(torch.finfo(torch.float32).tiny)
    loss = float(-true_class.double().log().sum()) / n
    accuracy = float((predictions == labels).sum()) / n
    return Evaluation(loss, accuracy, predictions, labels, time.perf_counter() - start)


def history_frame(history: Sequence[EpochStats]) -> pd.DataFrame:
    """The history as a table: epoch, then the per-epoch metrics under their MLflow names."""
    import pandas as pd

    cols = ["epoch", *EPOCH_METRICS]
    return pd.DataFrame([{c: getattr(h, c) for c in cols} for h in history], columns=cols)


def summary_metrics(result: TrainResult) -> dict[str, Any]:
    """metrics.json: the headline numbers a user compares across runs, numbers only (per-class
    values are in `per_class_metrics`, descriptions in `run_description`); only the `*_seconds`
    values may differ between seeded CPU runs."""
    ev = result.evaluation
    macro = {k: v for k, v in classification_metrics(ev, result.classes).items() if "macro" in k}
    return {
        "test_accuracy": ev.accuracy,
        "test_loss": ev.loss,
        "train_loss": result.history[-1].train_loss,
        **macro,
        **seed_summary(result),  # with seeds > 1: the members' mean, sd and 95 % CI
        "epochs": len(result.history),
        "train_samples": result.train_samples,
        "test_samples": len(ev.labels),
        "train_seconds": result.train_seconds,
        "mean_epoch_seconds": result.train_seconds / max(len(result.history), 1),
        "eval_seconds": result.eval_seconds,
    }


# metrics.json's keys: what `dvc metrics show` and `dvc exp show` put side by side. The other
# numbers go to details.json (and to MLflow, with these), so the table fits a terminal.
HEADLINE = ("test_accuracy", "test_loss", "macro_f1", "train_seconds")


def split_metrics(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics.json, details.json): the headline and, with seeds > 1, the members' test
    accuracy mean and 95 % CI; every other number in the details."""
    headline = {k: v for k, v in metrics.items() if k in HEADLINE or k.startswith("test_accuracy_")}
    return headline, {k: v for k, v in metrics.items() if k not in headline}


def run_description(result: TrainResult, source: str) -> dict[str, str]:
    """run.json: what describes the run rather than its result (the data's source, the dtype
    trained in, how idle OpenMP threads waited, what `auto` measured), beside metrics.json
    and never in it, so the DVC metric holds only numbers that repeat with the seed."""
    return {
        "data_source": source,
        "compute_dtype": compute_dtype(result),
        "openmp_wait": openmp.decision().tag(),  # spin or sleep, decided at start: the pace
        **(result.tuning.record() if result.tuning else {}),
    }


def tuning_tags(result: TrainResult) -> dict[str, str]:
    """The run's tags for the threads trained on, how idle ones waited and what `auto` chose
    (classify/training/tuning.py)."""
    return result.tuning.tags() if result.tuning else {"openmp_wait": openmp.decision().tag()}


def compute_dtype(result: TrainResult) -> str:
    """The dtype the net trained in (`bf16: auto` resolved)."""
    return "bfloat16" if result.bf16 else "float32"


def per_class_metrics(result: TrainResult) -> dict[str, dict[str, float | None]]:
    """per_class.json: each class's accuracy (recall), precision, recall and F1."""
    ev, classes = result.evaluation, result.classes
    per_class = ev.per_class_accuracy(len(classes))
    scores = classification_metrics(ev, classes)
    return {
        "per_class_accuracy": dict(zip(classes, per_class, strict=True)),
        **{k: v for k, v in scores.items() if "macro" not in k},
    }


def classification_metrics(ev: Evaluation, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class precision, recall and F1 and their macro averages, by scikit-learn.

    Every class gets a value (0 where it is never predicted or absent: `zero_division=0`), and
    the macro averages are the unweighted means over all classes, absent ones included."""
    from sklearn.metrics import precision_recall_fscore_support

    args = (ev.labels.numpy(), ev.predictions.numpy())
    kwargs = {"labels": list(range(len(classes))), "zero_division": 0}
    precision, recall, f1, _ = precision_recall_fscore_support(*args, **kwargs)
    macro = precision_recall_fscore_support(*args, average="macro", **kwargs)[:3]

    def per_class(values: np.ndarray) -> dict[str, float]:
        return dict(zip(classes, map(float, values), strict=True))

    return {
        "macro_precision": float(macro[0]),
        "macro_recall": float(macro[1]),
        "macro_f1": float(macro[2]),
        "precision": per_class(precision),
        "recall": per_class(recall),
        "f1": per_class(f1),
    }


def final_metrics(
    metrics: Mapping[str, Any], per_epoch: Sequence[str] = EPOCH_METRICS
) -> dict[str, Any]:
    """The run-level MLflow metrics: metrics.json flattened (`per_class_accuracy.cat`), less the
    `per_epoch` ones logged under these names, whose last points already are these values (with
    seeds > 1 the epochs are logged per member, `member_<k>/test_loss`: pass none)."""
    return {k: v for k, v in flatten(metrics).items() if k not in per_epoch}


def write_reports(
    result: TrainResult, data: ImageData, out_dir: str | Path
) -> tuple[dict[str, Any], list[Path]]:
    """Write metrics.json (the headline), details.json, run.json, per_class.json, history.csv,
    confusion.json and the four figures.

    Returns every number (headline and details: what MLflow gets) and the paths written."""
    from appliedtorch.classify.artifacts import figures as plots
    from appliedtorch.core.utils import write_json, write_text
    from appliedtorch.plots import save_figure

    out = Path(out_dir)
    ev, classes = result.evaluation, result.classes
    title = f"{data.name}{' (synthetic data)' if data.source == 'synthetic' else ''}"
    history = history_frame(result.history)
    write_text(out / "history.csv", history.to_csv(index=False))
    records = confusion_records(ev.labels.tolist(), ev.predictions.tolist(), classes)
    write_json(out / "confusion.json", records)
    write_json(out / "per_class.json", per_class_metrics(result))
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
    write_json(out / "run.json", run_description(result, data.source))
    metrics = summary_metrics(result)
    headline, details = split_metrics(metrics)
    write_json(out / "details.json", details)
    write_json(out / "metrics.json", headline)  # last: it marks a complete run
    names = ["metrics.json", "details.json", "run.json", "per_class.json", "history.csv"]
    names.append("confusion.json")
    names += list(figures)
    return metrics, [out / name for name in names]


def confusion_records(
    labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str]
) -> list[dict[str, Any]]:
    """confusion.json: one record per test sample, as DVC's confusion templates read them; the
    class indices let .dvc/plots/confusion_by_class.json order both axes as the PNG does (the
    dataset's order, not the alphabet's)."""
    return [
        {"actual": classes[a], "predicted": classes[p], "actual_index": a, "predicted_index": p}
        for a, p in zip(labels, predictions, strict=True)
    ]


def write_members(result: TrainResult, out_dir: str | Path) -> Path:
    """members.csv: one row per member (one for a single net) with its test accuracy, test loss,
    macro F1, last training loss and training seconds; member k trained with seed + k."""
    from appliedtorch.core.utils import write_text

    path = Path(out_dir) / "members.csv"
    write_text(path, member_frame(result).to_csv(index=False))
    return path


def portable_model(result: TrainResult) -> PixelClassifier:
    """The pixel classifier for export: a copy of the trained network on the CPU in the default
    memory format, with the normalisation inside.

    torch.export (MLflow's default format) warns about, and may mis-save, channels_last weights.
    """
    net = copy.deepcopy(result.model).to("cpu").to(memory_format=torch.contiguous_format)
    return PixelClassifier(net, result.mean, result.std).eval()


def input_example(result: TrainResult, data: ImageData, n: int = 4) -> np.ndarray:
    """The first `n` test images the run evaluated, as uint8 numpy (n, C, H, W): what the logged
    model takes. More than one, so that torch.export (MLflow's format) keeps the batch dynamic."""
    return data.test_images[: result.config.train_limit][:n].numpy()


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
        "input_dtype": "uint8",  # pixels in [0, 255]; the model normalises them
        "output": "probabilities",
        **({"members": len(result.members)} if result.members else {}),  # an Ensemble
    }


def write_outputs(
    result: TrainResult, data: ImageData, run: Any, *, model: Path, reports: Path
) -> None:
    """Write the model file and every report file as one set (all appear, or none changes),
    and give the run its final metrics, the files and the model."""
    with output_set(model.parent, reports) as out:
        save_verified_model(result, data, out.path(model))
        metrics, paths = write_reports(result, data, out.path(reports))
        paths.append(write_members(result, out.path(reports)))
        run.log_metrics(final_metrics(metrics, () if result.members else EPOCH_METRICS))
        for k, values in enumerate(member_metrics(result)):
            run.log_metrics(values, step=k)  # member_test_accuracy, ... with step = member
        run.log_artifacts(paths)  # the staged files, named as in reports/<section>
        run.set_tags({"compute_dtype": compute_dtype(result), **tuning_tags(result)})
        run.log_model(
            portable_model(result),
            "model",
            input_example(result, data),
            metadata=model_metadata(result, data),
        )
