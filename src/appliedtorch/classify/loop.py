"""Fast in-memory training and evaluation of the MNIST MLP and the CIFAR-10 CNN.

    >>> config = TrainConfig(arch="mlp", epochs=5, batch_size=64, lr=1e-3)
    >>> result = train_classifier(load_dataset("mnist", "data/raw/mnist"), config)
    >>> result.evaluation.accuracy
    0.97...

The tutorial feeds each sample through PIL transforms in a DataLoader; that per-sample Python
work, not the arithmetic, is what makes its MNIST epoch slow. Here the whole dataset sits in
memory as uint8 tensors on the training device; each batch is gathered with one index, augmented
(crop + flip) with one gather for the whole batch and normalised on the device. The loop knows
nothing about MLflow: it returns a history and calls `callback(epoch_stats)` after each epoch.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from appliedtorch.classify import resume as ckpt
from appliedtorch.classify.distributed import SINGLE, World
from appliedtorch.classify.models import build_model, load_checkpoint, save_checkpoint
from appliedtorch.core.errors import AppliedTorchError, DivergenceError
from appliedtorch.core.utils import atomic_path, resolve_device

if TYPE_CHECKING:
    import pandas as pd

    from appliedtorch.classify.resume import Checkpointer
    from appliedtorch.data import ImageData

log = logging.getLogger(__name__)

# Per-channel (mean, std) of the pixel values in [0, 1]. MNIST: the tutorial's (0.5, 0.5).
# CIFAR-10: the training set's per-channel std is (0.2470, 0.2435, 0.2616); the (0.2023, 0.1994,
# 0.2010) found in many tutorials is the std of per-image means, not of pixels, so it is not used.
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

# How often (in steps) the loop looks at the losses: every look is a host-device sync on a GPU.
CHECK_EVERY = 50


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train_classifier` needs; built from a params section by `from_section`."""

    arch: Literal["mlp", "cnn"]
    epochs: int
    batch_size: int
    lr: float
    hidden_size: int = 128  # MLP hidden width
    dropout: float = 0.5  # CNN
    step_size: int | None = None  # StepLR period in epochs; None keeps lr constant
    gamma: float = 0.1
    augment: bool = False  # random crop (4-pixel zero padding) + horizontal flip
    train_limit: int | None = None  # first N train and test samples
    eval_batch_size: int = 1024
    channels_last: bool = False
    bf16: bool = False  # bfloat16 autocast
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # CPU threads while training; None = torch's default
    device: str = "cpu"
    seed: int = 0
    progress: bool = True  # tqdm bar per epoch

    @classmethod
    def from_section(cls, arch: str, section: Any, *, seed: int, device: str) -> TrainConfig:
        """Take the matching fields of a params section (e.g. `params.mlp`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in section.model_dump().items() if k in names}
        return cls(arch=arch, seed=seed, device=device, **values)  # type: ignore[arg-type]


@dataclass
class EpochStats:
    """One epoch's numbers, passed to the callback and kept in the history."""

    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float  # the training pass alone
    eval_seconds: float
    lr: float

    def metrics(self) -> dict[str, float]:
        """The per-epoch metrics as MLflow names them."""
        return {
            "train_loss": self.train_loss,
            "test_loss": self.test_loss,
            "test_accuracy": self.test_accuracy,
            "epoch_seconds": self.seconds,
            "lr": self.lr,
        }


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


@dataclass
class TrainResult:
    """A trained model with its history and final evaluation."""

    model: nn.Module  # trained, in eval mode, on the training device (never the compiled wrapper)
    config: TrainConfig
    history: list[EpochStats]
    evaluation: Evaluation
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_args: dict[str, Any] = field(default_factory=dict)
    train_samples: int = 0
    train_seconds: float = 0.0  # sum of the training passes (the loop alone, no evaluation)
    eval_seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Batch transforms: whole batches of tensors, on the data's device.


class Normalizer:
    """uint8 (B, C, H, W) in [0, 255] -> float32 (x / 255 - mean) / std, in one fused multiply-add."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = "cpu",
        channels_last: bool = False,
    ):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(dtype=torch.float32, memory_format=self.memory_format)
        return torch.addcmul(self.shift, x, self.scale)


def random_crop_flip(
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    padding: int = 4,
    flip_p: float = 0.5,
) -> torch.Tensor:
    """Random crop with zero padding + random horizontal flip, per sample, for a whole batch.

    Same distribution as torchvision's per-sample RandomCrop(size, padding) followed by
    RandomHorizontalFlip(flip_p): each image is shifted by (dy, dx) drawn uniformly from
    [-padding, padding]^2 with zero fill, then mirrored with probability flip_p. Works on any
    dtype (use it on uint8, before normalising, so the fill is a black pixel as in torchvision).
    """
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p), zero fill
    top = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (b, 1), generator=generator, device=device)
    flip = torch.rand((b, 1), generator=generator, device=device) < flip_p
    rows = top + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device)
    cols = left + torch.where(flip, w - 1 - cols, cols)  # (B, W): a flip reads columns backwards
    batch = torch.arange(b, device=device).view(b, 1, 1, 1)
    chan = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]  # (B, C, H, W)


# --------------------------------------------------------------------------------------------
# Training and evaluation


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Use n CPU threads inside the block (None: leave torch's setting alone)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _make_optimizer(model: nn.Module, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """Adam; the fused kernel (one op for all parameters) where this build has it."""
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):  # fused not available for this device/build
        return torch.optim.Adam(model.parameters(), lr=lr)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    normalizer: Normalizer,
    batch_size: int = 1024,
    bf16: bool = False,
) -> Evaluation:
    """Mean cross-entropy, accuracy and predictions of `model` on uint8 `images`, in large batches."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    preds = []
    for s in range(0, len(images), batch_size):
        xb = normalizer(images[s : s + batch_size].to(device, non_blocking=True))
        yb = labels[s : s + batch_size].to(device, non_blocking=True)
        with _autocast(device, bf16):
            logits = model(xb)
        total_loss += F.cross_entropy(logits.float(), yb, reduction="sum")
        preds.append(logits.argmax(dim=1))
    predictions = torch.cat(preds).cpu() if preds else torch.zeros(0, dtype=torch.int64)
    labels_cpu = labels.cpu()
    n = max(len(labels_cpu), 1)
    _sync(device)
    model.train(was_training)
    return Evaluation(
        loss=float(total_loss) / n,
        accuracy=float((predictions == labels_cpu).sum()) / n,
        predictions=predictions,
        labels=labels_cpu,
        seconds=time.perf_counter() - start,
    )


def model_args_for(config: TrainConfig, data: ImageData) -> dict[str, Any]:
    """Constructor arguments of the network for this config and dataset."""
    _, c, h, w = data.train_images.shape
    classes = len(data.classes)
    if config.arch == "mlp":
        return {"in_features": c * h * w, "hidden_size": config.hidden_size, "num_classes": classes}
    return {"in_channels": c, "num_classes": classes, "dropout": config.dropout, "image_size": h}


def _check_finite(
    losses: torch.Tensor,
    upto: int,
    checked: int,
    epoch: int,
    lr: float,
    arch: str,
    world: World = SINGLE,
) -> int:
    """Raise DivergenceError naming the first step in [checked, upto) with a NaN/inf loss."""
    window = losses[checked:upto]
    bad = ~torch.isfinite(window)
    # With several processes all of them stop together (one alone would leave the rest waiting).
    if world.any(bool(bad.any())) and not bool(bad.any()):
        raise DivergenceError(
            f"training diverged in another process at epoch {epoch} (lr {lr:g}); "
            f"lower {arch}.lr in params.yaml"
        )
    if bool(bad.any()):
        step = checked + int(bad.nonzero()[0, 0]) + 1
        value = float(window[step - checked - 1])
        raise DivergenceError(
            f"training diverged: loss became {value} at epoch {epoch}, step {step} (lr {lr:g}); "
            f"lower {arch}.lr in params.yaml"
        )
    return upto


def train_classifier(
    data: ImageData,
    config: TrainConfig,
    callback: Callable[[EpochStats], None] | None = None,
    checkpoint: Checkpointer | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train the configured network on `data` (in memory) and evaluate it after every epoch.

    With `checkpoint`, the state is saved after every epoch and a loaded state is resumed from.
    With a distributed `world` (torchrun), each process trains on its shard of every epoch's
    permutation and the metrics are combined across processes (see `appliedtorch.classify.distributed`).
    """
    device = resolve_device(config.device)
    mean, std = NORMALIZATION.get(data.name, NORMALIZATION["cifar10"])
    if len(mean) != data.train_images.shape[1]:
        raise AppliedTorchError(
            f"dataset '{data.name}' has {data.train_images.shape[1]} channel(s) "
            f"but its normalisation has {len(mean)}"
        )
    limit = config.train_limit
    # Data moves to the device once; batches are gathered there.
    train_x = data.train_images[:limit].to(device)
    train_y = data.train_labels[:limit].to(device)
    test_x = data.test_images[:limit].to(device)
    test_y = data.test_labels[:limit].to(device)
    n = len(train_x)
    if n == 0 or len(test_x) == 0:
        raise AppliedTorchError(f"dataset '{data.name}' has no training or no test samples")
    batch_size = world.local_batch_size(config.batch_size, config.arch)  # config's, alone
    n_local = world.shard_size(n)  # n, alone
    eval_x, eval_y = world.shard_eval(test_x, test_y, config.eval_batch_size)

    torch.manual_seed(config.seed)  # weight init and dropout
    generator = torch.Generator(device=device).manual_seed(config.seed)  # shuffling, augmentation
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model_args = model_args_for(config, data)
    model = build_model(config.arch, **model_args).to(device)
    world.seed_rank(config.seed)
    augment_generator = world.augment_generator(generator, config.seed, device)  # alone: generator
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = world.wrap(model, device)  # DistributedDataParallel with several processes
    net = torch.compile(net) if config.compile else net
    optimizer = _make_optimizer(model, config.lr, device)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, config.step_size, config.gamma)
        if config.step_size
        else None
    )
    normalizer = Normalizer(mean, std, device, config.channels_last)
    steps = math.ceil(n_local / batch_size)
    sizes = torch.full((steps,), float(batch_size), device=device)
    sizes[-1] = n_local - (steps - 1) * batch_size  # the last batch may be short, as in DataLoader
    history: list[EpochStats] = []
    train_seconds = 0.0
    eval_seconds = 0.0
    done, evaluation = 0, None
    if checkpoint is not None and checkpoint.state is not None:
        done = ckpt.restore(checkpoint.state, model, optimizer, scheduler, generator)
        history = [EpochStats(**h) for h in checkpoint.state["history"]]
        train_seconds, eval_seconds = checkpoint.state["seconds"]

    with cpu_threads(config.threads):
        for epoch in range(done + 1, config.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            net.train()
            losses = torch.zeros(steps, device=device)
            checked = 0
            _sync(device)
            start = time.perf_counter()
            perm = world.shard(torch.randperm(n, generator=generator, device=device))
            bar = tqdm(
                range(steps),
                desc=f"epoch {epoch}/{config.epochs}",
                unit="batch",
                leave=False,
                disable=None if config.progress and world.is_main else True,  # None: a terminal
                mininterval=0.5,
            )
            for k in bar:
                idx = perm[k * batch_size : (k + 1) * batch_size]
                xb = train_x[idx]  # (B, C, H, W) uint8
                if config.augment:
                    xb = random_crop_flip(xb, augment_generator)
                xb = normalizer(xb)
                with _autocast(device, config.bf16):
                    logits = net(xb)
                loss = F.cross_entropy(logits.float(), train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses[k] = loss.detach()  # no host sync here; checked every CHECK_EVERY steps
                if (k + 1) % CHECK_EVERY == 0:
                    checked = _check_finite(losses, k + 1, checked, epoch, lr, config.arch, world)
                    bar.set_postfix(loss=f"{float(losses[k]):.4f}", refresh=False)
            _check_finite(losses, steps, checked, epoch, lr, config.arch, world)
            _sync(device)
            seconds = time.perf_counter() - start
            bar.close()
            train_seconds += seconds
            train_loss = world.mean((losses * sizes).sum(), n_local)  # per-sample mean
            if scheduler is not None:
                scheduler.step()
            evaluation = world.merge_evaluation(
                evaluate(net, eval_x, eval_y, normalizer, config.eval_batch_size, config.bf16),
                test_y,
                config.eval_batch_size,
            )
            eval_seconds += evaluation.seconds
            stats = EpochStats(
                epoch=epoch,
                train_loss=train_loss,
                test_loss=evaluation.loss,
                test_accuracy=evaluation.accuracy,
                seconds=seconds,
                eval_seconds=evaluation.seconds,
                lr=lr,
            )
            history.append(stats)
            log.info(
                "epoch %d: train loss %.4f, test loss %.4f, test acc %.2f%%, %.1f s",
                epoch,
                train_loss,
                evaluation.loss,
                100 * evaluation.accuracy,
                seconds,
            )
            if callback is not None:
                callback(stats)
            if checkpoint is not None:
                extra = {
                    "history": [dataclasses.asdict(h) for h in history],
                    "seconds": (train_seconds, eval_seconds),
                }
                checkpoint.save(ckpt.capture(epoch, model, optimizer, scheduler, generator, extra))
        if evaluation is None:  # resumed after the last epoch: only the final evaluation is left
            evaluation = world.merge_evaluation(
                evaluate(net, eval_x, eval_y, normalizer, config.eval_batch_size, config.bf16),
                test_y,
                config.eval_batch_size,
            )

    model.eval()
    return TrainResult(
        model=model,
        config=config,
        history=history,
        evaluation=evaluation,
        classes=list(data.classes),
        mean=mean,
        std=std,
        model_args=model_args,
        train_samples=n,
        train_seconds=train_seconds,
        eval_seconds=eval_seconds,
    )


# --------------------------------------------------------------------------------------------
# Outputs: checkpoint (verified by reloading), metrics, history, figures


def save_verified_checkpoint(result: TrainResult, data: ImageData, path: str | Path) -> Evaluation:
    """Save the model, reload the file and check it reproduces the test predictions.

    The file appears at `path` only if the reloaded model gives the same accuracy (the
    tutorial's "loaded model accuracy", made a check instead of a printout).
    """
    config = result.config
    device = next(result.model.parameters()).device
    limit = config.train_limit
    with atomic_path(path) as tmp:
        save_checkpoint(
            tmp,
            result.model,
            config.arch,
            result.model_args,
            classes=result.classes,
            mean=list(result.mean),
            std=list(result.std),
            dataset=data.name,
            data_source=data.source,
            input_shape=list(data.test_images.shape[1:]),
            test_accuracy=result.evaluation.accuracy,
        )
        reloaded, _ = load_checkpoint(tmp)
        reloaded = reloaded.to(device)
        if config.channels_last:
            reloaded = reloaded.to(memory_format=torch.channels_last)
        normalizer = Normalizer(result.mean, result.std, device, config.channels_last)
        with cpu_threads(config.threads):  # the thread count can change the last bits of a sum
            again = evaluate(
                reloaded,
                data.test_images[:limit].to(device),
                data.test_labels[:limit],
                normalizer,
                config.eval_batch_size,
                config.bf16,
            )
        # Bit-identical on the CPU; a GPU may pick other kernels, so allow one sample in 1000.
        tolerance = 0.0 if device.type == "cpu" else 1e-3
        if abs(again.accuracy - result.evaluation.accuracy) > tolerance:
            raise AppliedTorchError(
                f"{path}: the reloaded model scores {again.accuracy:.4%}, the trained one "
                f"{result.evaluation.accuracy:.4%}; the checkpoint does not reproduce the model"
            )
    log.info("saved %s (reloaded model accuracy %.2f%%)", path, 100 * again.accuracy)
    return again


def history_frame(history: Sequence[EpochStats]) -> pd.DataFrame:
    """The history as a table: epoch, train_loss, test_loss, test_accuracy, seconds, lr."""
    import pandas as pd

    cols = ["epoch", "train_loss", "test_loss", "test_accuracy", "seconds", "lr"]
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
        "epoch_seconds": result.train_seconds / max(len(result.history), 1),  # mean
        "eval_seconds": result.eval_seconds,
        "data_source": source,
    }


def final_metrics(result: TrainResult, reloaded: Evaluation | None = None) -> dict[str, float]:
    """Run-level metrics for the tracker; the per-epoch curves are logged by the callback."""
    out = {
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "mean_epoch_seconds": result.train_seconds / max(len(result.history), 1),
    }
    if reloaded is not None:
        out["reloaded_test_accuracy"] = reloaded.accuracy
    per_class = result.evaluation.per_class_accuracy(len(result.classes))
    for name, acc in zip(result.classes, per_class, strict=True):
        if acc is not None:
            out[f"class_accuracy.{re.sub(r'[^A-Za-z0-9_. -]', '_', name)}"] = acc
    return out


def write_reports(result: TrainResult, data: ImageData, out_dir: str | Path) -> list[Path]:
    """Write metrics.json, history.csv, confusion.json and the four figures; return their paths."""
    from appliedtorch.classify import figures as plots
    from appliedtorch.core.plots import save_figure
    from appliedtorch.core.utils import write_json, write_text

    out = Path(out_dir)
    ev, classes = result.evaluation, result.classes
    metrics = summary_metrics(result, data.source)
    cm = ev.confusion(len(classes))
    title = f"{data.name}{' (synthetic data)' if data.source == 'synthetic' else ''}"
    paths = {
        "metrics": out / "metrics.json",
        "history": out / "history.csv",
        "confusion": out / "confusion.json",
        "loss": out / "loss.png",
        "cm": out / "confusion_matrix.png",
        "per_class": out / "per_class_accuracy.png",
        "predictions": out / "predictions.png",
    }
    write_json(paths["metrics"], metrics)
    write_text(paths["history"], history_frame(result.history).to_csv(index=False))
    # DVC's `confusion` template reads one record per sample.
    actual = [classes[i] for i in ev.labels.tolist()]
    predicted = [classes[i] for i in ev.predictions.tolist()]
    write_json(
        paths["confusion"],
        [{"actual": a, "predicted": p} for a, p in zip(actual, predicted, strict=True)],
    )
    save_figure(plots.training_curves(history_frame(result.history), title), paths["loss"])
    save_figure(plots.confusion_heatmap(cm, classes, title), paths["cm"])
    per_class = ev.per_class_accuracy(len(classes))
    save_figure(plots.per_class_accuracy_bars(per_class, classes, title), paths["per_class"])
    test_images = data.test_images[: result.config.train_limit]
    save_figure(
        plots.prediction_grid(test_images, ev.predictions, ev.labels, classes, title),
        paths["predictions"],
    )
    return list(paths.values())


def portable_model(result: TrainResult) -> nn.Module:
    """A copy of the trained network on the CPU in the default memory format, for export.

    torch.export (MLflow's default format) warns about, and may mis-save, channels_last weights.
    """
    model = copy.deepcopy(result.model).to("cpu")
    return model.to(memory_format=torch.contiguous_format).eval()


def input_example(result: TrainResult, data: ImageData, n: int = 4) -> np.ndarray:
    """A few normalised test images as float32 numpy: what the logged model takes as input."""
    normalizer = Normalizer(result.mean, result.std)
    return normalizer(data.test_images[:n]).numpy().astype(np.float32)


def model_metadata(result: TrainResult, data: ImageData) -> dict[str, Any]:
    """What a user of the logged model needs besides the weights (read by `predict`)."""
    return {
        "classes": list(result.classes),
        "mean": list(result.mean),
        "std": list(result.std),
        "input_shape": list(data.test_images.shape[1:]),
        "dataset": data.name,
        "data_source": data.source,
    }
