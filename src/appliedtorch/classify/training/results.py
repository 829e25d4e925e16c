"""What training gives back: each epoch's numbers, an evaluation, and the trained model's result.

result = train_classifier(data, params.mlp, seed=42)
result.evaluation.accuracy, result.history[-1].train_loss, result.train_seconds
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from appliedtorch.classify.runs.distributed import World

if TYPE_CHECKING:
    from appliedtorch.classify.params import ClassifierParams
    from appliedtorch.classify.training.tuning import Tuning


@dataclass
class EpochStats:
    """One epoch's numbers, passed to the callback and kept in the history (history.csv)."""

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    epoch_seconds: float  # the training pass alone
    eval_seconds: float
    lr: float

    def metrics(self) -> dict[str, float]:
        """The per-epoch metrics, logged with step=epoch under these names."""
        names = ("train_loss", "test_loss", "test_accuracy", "epoch_seconds", "lr")
        return {name: getattr(self, name) for name in names}


@dataclass
class Evaluation:
    """Loss, accuracy and per-sample predictions on a test set (tensors on the CPU)."""

    loss: float
    accuracy: float
    predictions: torch.Tensor  # (N,) int64
    labels: torch.Tensor  # (N,) int64
    seconds: float = 0.0

    def confusion(self, num_classes: int) -> np.ndarray:
        """Confusion matrix, rows = actual class, columns = predicted (sklearn's convention)."""
        from sklearn.metrics import confusion_matrix

        return confusion_matrix(
            self.labels.numpy(), self.predictions.numpy(), labels=list(range(num_classes))
        )

    def per_class_accuracy(self, num_classes: int) -> list[float | None]:
        """Recall of each class; None for a class absent from the test set."""
        cm = self.confusion(num_classes)
        totals = cm.sum(axis=1)
        return [float(cm[i, i] / t) if t else None for i, t in enumerate(totals)]

    def merge(self, world: World, rows: torch.Tensor | None) -> Evaluation:
        """The whole test set's evaluation from every process's part (`rows`: this part's rows)."""
        if not world.distributed or rows is None:
            return self
        order = torch.cat(world.all_gather(rows))
        predictions, labels = torch.empty_like(order), torch.empty_like(order)
        predictions[order] = torch.cat(world.all_gather(self.predictions))
        labels[order] = torch.cat(world.all_gather(self.labels))
        (loss_sum,) = world.sum(self.loss * len(self.labels))  # `loss` is this part's mean
        (seconds,) = world.max(self.seconds)  # the slowest part's time
        n = max(len(order), 1)
        accuracy = float((predictions == labels).sum()) / n
        return Evaluation(loss_sum / n, accuracy, predictions, labels, seconds)


@dataclass
class TrainResult:
    """A trained model with its history and final evaluation."""

    model: nn.Module  # trained, in eval mode, on the training device (never the compiled wrapper)
    config: ClassifierParams  # how it was trained
    bf16: bool  # whether it trained in bfloat16 (`bf16: auto` resolved)
    history: list[EpochStats]
    evaluation: Evaluation
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_args: dict[str, Any]
    train_samples: int
    tuning: Tuning | None = None  # bf16 and threads as resolved, with `auto`'s probe (tuning.py)
    # With `seeds` > 1: each member's own result; `model` is then their Ensemble (ensemble.py)
    members: list[TrainResult] = field(default_factory=list)

    @property
    def threads(self) -> int | None:
        """The CPU threads it trained on (`threads: auto` resolved; None: torch's default)."""
        return self.tuning.threads if self.tuning else self.config.threads  # type: ignore[return-value]

    @property
    def train_seconds(self) -> float:
        """Sum of the training passes (the loop alone, no evaluation)."""
        return sum(h.epoch_seconds for h in self.history)

    @property
    def eval_seconds(self) -> float:
        """Sum of the per-epoch evaluations."""
        return sum(h.eval_seconds for h in self.history)
