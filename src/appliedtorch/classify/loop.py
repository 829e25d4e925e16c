"""The classifier training loop: `train_one_epoch` and `evaluate`, composed by `train_classifier`.

    >>> config = TrainConfig(arch="mlp", epochs=5, batch_size=64, lr=1e-3)
    >>> result = train_classifier(load_dataset("mnist", "data/raw/mnist"), config)
    >>> result.evaluation.accuracy
    0.97...

The data stays on the training device and `Batches` (see `appliedtorch.classify.batches`) owns
shuffling, sharding, augmentation and normalisation, so an epoch is `for images, labels in
batches:` as in pytorch/examples' `train()`. The loop knows nothing about MLflow: it returns a
history and calls `callback(epoch_stats)` after each epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from appliedtorch.classify.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.distributed import SINGLE, World
from appliedtorch.classify.models import build_model
from appliedtorch.core.errors import AppliedTorchError, DivergenceError
from appliedtorch.core.hardware import resolve_bf16
from appliedtorch.core.utils import resolve_device, thread_count

if TYPE_CHECKING:
    from appliedtorch.classify.resume import ResumeState
    from appliedtorch.data import ImageData

log = logging.getLogger(__name__)

# How often (in steps) the loop looks at the losses: every look is a host-device sync on a GPU.
CHECK_EVERY = 50


@dataclass(frozen=True)
class TrainConfig:
    """Everything `train_classifier` needs; built from a params section by `from_section`."""

    arch: Literal["mlp", "cnn"]  # which classifier: the MNIST MLP or the CIFAR-10 CNN
    epochs: int
    batch_size: int
    lr: float
    net: str = "tutorial"  # the section's `arch`: tutorial | residual (mlp) | resnet (cnn)
    hidden_size: int = 128  # MLP hidden width
    hidden_layers: int = 2  # MLP
    width: int = 32  # CNN: first stage's channels
    batch_norm: bool = False
    dropout: float | None = None  # None: the net's own default (MLP 0, CNN 0.5)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0  # weights of convs and linears only
    scheduler: Literal["constant", "step", "cosine", "onecycle"] = "step"
    step_size: int | None = None  # StepLR period in epochs; None keeps lr constant
    gamma: float = 0.1
    warmup_epochs: float | None = None  # None: onecycle's 30 %, no warm-up for the others
    label_smoothing: float = 0.0  # training loss only
    augment: bool = False  # random crop (4-pixel zero padding) + horizontal flip
    flip_tta: bool = False  # CNN: evaluate on each image and its mirror (mean logits)
    train_limit: int | None = None  # first N train and test samples
    eval_batch_size: int = 1024
    channels_last: bool = False
    bf16: bool = False  # bfloat16 autocast (resolved: from_section turns `auto` into a choice)
    compile: bool = False  # torch.compile the model
    threads: int | None = None  # CPU threads while training; None = torch's default
    device: str = "cpu"
    seed: int = 0
    progress: bool = True  # tqdm bar per epoch (shown on a terminal only)

    @classmethod
    def from_section(cls, arch: str, section: Any, *, seed: int, device: str) -> TrainConfig:
        """Take the matching fields of a params section (e.g. `params.mlp`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in section.model_dump().items() if k in names - {"arch"}}
        values["net"] = section.arch  # `arch` here is the classifier (mlp/cnn)
        # `bf16: auto` becomes a choice here, for the device that will train.
        values["bf16"] = resolve_bf16(values.get("bf16", False), resolve_device(device))
        return cls(arch=arch, seed=seed, device=device, **values)  # type: ignore[arg-type]


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
    config: TrainConfig
    history: list[EpochStats]
    evaluation: Evaluation
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model_args: dict[str, Any]
    train_samples: int

    @property
    def train_seconds(self) -> float:
        """Sum of the training passes (the loop alone, no evaluation)."""
        return sum(h.epoch_seconds for h in self.history)

    @property
    def eval_seconds(self) -> float:
        """Sum of the per-epoch evaluations."""
        return sum(h.eval_seconds for h in self.history)


# --------------------------------------------------------------------------------------------
# One epoch of training, one evaluation


class StepLosses:
    """One epoch's step losses, kept on the device: the host looks every CHECK_EVERY steps.

    Raises DivergenceError naming the first step with a NaN or infinite loss; with several
    processes all of them stop together (one alone would leave the others waiting).
    """

    def __init__(self, batches: Batches, epoch: int, lr: float, arch: str, bar: Any = None):
        self.batches, self.epoch, self.lr, self.arch, self.bar = batches, epoch, lr, arch, bar
        self.values = torch.zeros(len(batches), device=batches.device)
        self.count = self.checked = 0

    def append(self, loss: torch.Tensor) -> None:
        self.values[self.count] = loss.detach()  # no host sync here
        self.count += 1
        if self.count % CHECK_EVERY == 0:
            self.check()
            if self.bar is not None:
                self.bar.set_postfix(
                    loss=f"{float(self.values[self.count - 1]):.4f}", refresh=False
                )

    def check(self) -> None:
        """Stop on a NaN/inf among the losses appended since the last check."""
        bad = ~torch.isfinite(self.values[self.checked : self.count])
        here = bool(bad.any())
        advice = f"(lr {self.lr:g}); lower {self.arch}.lr in params.yaml"
        if self.batches.world.any(here) and not here:
            raise DivergenceError(
                f"training diverged in another process at epoch {self.epoch} {advice}"
            )
        if here:
            step = self.checked + int(bad.nonzero()[0, 0]) + 1
            value = float(self.values[step - 1])
            raise DivergenceError(
                f"training diverged: loss became {value} at epoch {self.epoch}, step {step} {advice}"
            )
        self.checked = self.count

    def mean(self) -> float:
        """The epoch's mean loss per sample, over every process (after a last check)."""
        self.check()
        total = float((self.values * self.batches.sizes()).sum())
        total, count = self.batches.world.sum(total, self.batches.samples)
        return total / count


def train_one_epoch(
    net: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    losses: StepLosses,
    bf16: bool = False,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    label_smoothing: float = 0.0,
) -> float:
    """One pass over the training batches; returns the mean training loss per sample. The
    scheduler, if any, steps after every batch (onecycle and warm-up need steps, not epochs)."""
    net.train()
    for images, labels in batches:
        with _autocast(images.device, bf16):
            logits = net(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss)
    return losses.mean()


@torch.inference_mode()
def evaluate(model: nn.Module, batches: Batches, bf16: bool = False) -> Evaluation:
    """Mean cross-entropy, accuracy and predictions of `model` over (in-order) `batches`; under
    torchrun each process evaluates its part and every process gets the whole test set's."""
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=batches.device)
    predictions, targets = [], []
    for images, labels in batches:
        with _autocast(images.device, bf16):
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum")
        predictions.append(logits.argmax(dim=1))
        targets.append(labels)
    empty = torch.zeros(0, dtype=torch.int64)
    predicted = torch.cat(predictions).cpu() if predictions else empty
    actual = torch.cat(targets).cpu() if targets else empty
    n = max(len(actual), 1)
    _sync(batches.device)
    model.train(was_training)
    seconds = time.perf_counter() - start
    evaluation = Evaluation(
        float(loss_sum) / n, float((predicted == actual).sum()) / n, predicted, actual, seconds
    )
    return evaluation.merge(batches.world, batches.rows)


# --------------------------------------------------------------------------------------------
# The whole run


def train_classifier(
    data: ImageData,
    config: TrainConfig,
    callback: Callable[[EpochStats], None] | None = None,
    resume: ResumeState | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train the configured network on `data` (in memory) and evaluate it after every epoch.

    With `resume`, the resume state is saved after every epoch, and a loaded one is resumed from
    (under torchrun on every process: each saves and restores its own random streams).
    With a distributed `world` (torchrun), each process trains on its shard of every epoch's
    permutation and the metrics are combined across processes.
    """
    if resume is not None and resume.world != world:
        raise ValueError("the resume state belongs to another process group than `world`")
    device = resolve_device(config.device)
    batch_size = _local_batch_size(config, world)  # a bad split fails before any work
    mean, std = _normalization(data)
    normalize = Normalizer(mean, std, device, config.channels_last)
    model_args = model_args_for(config, data)
    model, net, optimizer, shuffle, augment = _build(config, model_args, device, world)
    train, test = _batches(data, config, batch_size, normalize, shuffle, augment, world)
    scheduler = make_scheduler(optimizer, config, len(train))
    streams = {"shuffle": shuffle, "augment": augment}  # one generator in one process
    done = resume.restore(model, optimizer, scheduler, streams) if resume else 0
    history = [EpochStats(**h) for h in resume.history] if resume else []
    evaluation = None
    with thread_count(config.threads):
        for epoch in range(done + 1, config.epochs + 1):
            lr = optimizer.param_groups[0]["lr"]
            bar = _progress(
                train, f"epoch {epoch}/{config.epochs}", config.progress and world.is_main
            )
            with _Stopwatch(device) as clock:
                losses = StepLosses(train, epoch, lr, config.arch, bar)
                train_loss = train_one_epoch(net, bar, optimizer, losses, config.bf16, scheduler,
                                             config.label_smoothing)  # fmt: skip
            bar.close()
            evaluation = evaluate(_evaluated(net, model, world), test, config.bf16)
            stats = EpochStats(epoch, train_loss, evaluation.loss, evaluation.accuracy,
                               clock.seconds, evaluation.seconds, lr)  # fmt: skip
            history.append(stats)
            log.info(
                "epoch %d: train loss %.4f, test loss %.4f, test acc %.2f%%, %.1f s",
                epoch, train_loss, evaluation.loss, 100 * evaluation.accuracy, clock.seconds,
            )  # fmt: skip
            if callback is not None:
                callback(stats)
            if resume is not None:
                history_dicts = [dataclasses.asdict(h) for h in history]
                resume.save(epoch, model, optimizer, scheduler, streams, history_dicts)
        if evaluation is None:  # resumed after the last epoch: only the final evaluation is left
            evaluation = evaluate(_evaluated(net, model, world), test, config.bf16)
    model.eval()
    return TrainResult(model, config, history, evaluation, list(data.classes), mean, std,
                       model_args, len(train.images))  # fmt: skip


def _evaluated(net: nn.Module, model: nn.Module, world: World) -> nn.Module:
    """The module that evaluates: `net`, or under torchrun the unwrapped model holding rank 0's
    buffers. DistributedDataParallel broadcasts buffers (batch norm's) in every forward, a
    collective that a process with no test batch would never join: the others would hang."""
    if not world.distributed:
        return net
    world.broadcast_buffers(model)
    return model


def model_name(config: TrainConfig) -> str:
    """The network's name in `models.ARCHITECTURES` (and in the model file)."""
    return "resnet" if config.arch == "cnn" and config.net == "resnet" else config.arch


def model_args_for(config: TrainConfig, data: ImageData) -> dict[str, Any]:
    """Constructor arguments of the network for this config and dataset.

    The tutorial's nets get only the arguments they always had, and each option only where it
    differs from the tutorial: the default model file holds the same bytes as before the options.
    """
    _, c, h, w = data.train_images.shape
    classes = len(data.classes)
    name = model_name(config)
    if name == "resnet":
        return {"in_channels": c, "num_classes": classes, "dropout": config.dropout or 0.0,
                "width": config.width, "batch_norm": config.batch_norm,
                "flip_tta": config.flip_tta}  # fmt: skip
    if name == "mlp":
        args = {"in_features": c * h * w, "hidden_size": config.hidden_size, "num_classes": classes}
        options = {"hidden_layers": (config.hidden_layers, 2),
                   "residual": (config.net == "residual", False),
                   "batch_norm": (config.batch_norm, False), "dropout": (config.dropout or 0.0, 0.0)}  # fmt: skip
    else:
        dropout = 0.5 if config.dropout is None else config.dropout
        args = {"in_channels": c, "num_classes": classes, "dropout": dropout, "image_size": h}
        options = {"width": (config.width, 32), "batch_norm": (config.batch_norm, False),
                   "flip_tta": (config.flip_tta, False)}  # fmt: skip
    return {**args, **{k: v for k, (v, tutorial) in options.items() if v != tutorial}}


def _normalization(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = NORMALIZATION.get(data.name, NORMALIZATION["cifar10"])
    if len(mean) != data.train_images.shape[1]:
        raise AppliedTorchError(
            f"dataset '{data.name}' has {data.train_images.shape[1]} channel(s) "
            f"but its normalisation has {len(mean)}"
        )
    return mean, std


def _build(
    config: TrainConfig, model_args: dict[str, Any], device: torch.device, world: World
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.Generator, torch.Generator]:
    """Model, the module to call (DDP, compiled), optimizer and the random streams."""
    torch.manual_seed(config.seed)  # weight init and dropout
    shuffle = torch.Generator(device=device).manual_seed(config.seed)  # permutation, augmentation
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(model_name(config), **model_args).to(device)
    augment = shuffle
    if world.distributed:
        # After the shared weight init, each process draws its own dropout masks, crops and flips
        # (the same stream everywhere would give every shard the same ones); the permutation's
        # stream stays shared, so the shards of an epoch never overlap.
        torch.manual_seed(config.seed + world.rank)
        augment = torch.Generator(device=device).manual_seed(
            config.seed * 1_000_003 + 1 + world.rank
        )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = world.wrap(model, device)  # DistributedDataParallel with several processes
    net = torch.compile(net) if config.compile else net
    optimizer = make_optimizer(model, config, device)
    return model, net, optimizer, shuffle, augment


def _batches(
    data: ImageData,
    config: TrainConfig,
    batch_size: int,
    normalize: Normalizer,
    shuffle: torch.Generator,
    augment: torch.Generator,
    world: World,
) -> tuple[Batches, Batches]:
    """This process's training batches (shuffled, maybe augmented) and test batches (in order)."""
    limit = config.train_limit
    train = Batches(
        data.train_images[:limit],
        data.train_labels[:limit],
        batch_size,
        normalize,
        shuffle=shuffle,
        augment=augment if config.augment else None,
        world=world,
        drop_single=config.batch_norm,
    )
    test = Batches(
        data.test_images[:limit], data.test_labels[:limit], config.eval_batch_size, normalize,
        world=world,
    )  # fmt: skip
    if len(train.images) == 0 or len(test.images) == 0:
        raise AppliedTorchError(f"dataset '{data.name}' has no training or no test samples")
    if config.batch_norm and train.samples < 2:
        raise AppliedTorchError(
            f"{config.arch}.batch_norm needs at least 2 training samples per process (got "
            f"{train.samples}; raise {config.arch}.train_limit)"
        )
    return train, test


def _local_batch_size(config: TrainConfig, world: World) -> int:
    """Each process's share of a global batch of `config.batch_size` samples."""
    if config.batch_size % world.size:
        raise AppliedTorchError(
            f"{config.arch}.batch_size ({config.batch_size}) must be divisible by the number of "
            f"processes ({world.size}): each process takes an equal share of every batch"
        )
    if config.batch_norm and config.batch_size // world.size < 2:
        raise AppliedTorchError(
            f"{config.arch}.batch_norm needs at least 2 samples per process in a batch "
            f"({config.arch}.batch_size {config.batch_size} on {world.size} processes)"
        )
    return config.batch_size // world.size


_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(
    model: nn.Module, config: TrainConfig, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer; the fused kernel (one op for all parameters) where this build
    has it. Weight decay applies to the weights of convolutions and linear layers (2-D and up),
    not to biases and norm scales (nanoGPT's configure_optimizers)."""
    params: Any = list(model.parameters())
    if config.weight_decay:
        params = [
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    # weight_decay always given: AdamW's own default is 0.01, on every parameter.
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        kwargs.update(momentum=config.momentum, nesterov=config.nesterov)
    cls = _OPTIMIZERS[config.optimizer]
    try:
        return cls(params, **kwargs, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):  # fused not available for this device/build
        return cls(params, **kwargs)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The configured learning-rate schedule, stepped once per batch (torch's own schedulers).

    step: x gamma after every step_size epochs (counted from the end of any warm-up), the
    tutorial's StepLR counted in steps; cosine: to 0 at the last step; onecycle: OneCycleLR's schedule (lr/25 up to lr over the warm-up, then
    cosine down to lr/250000), momentum left as configured. A warm-up (not onecycle's) ramps
    linearly from lr/100.
    """
    sched = torch.optim.lr_scheduler
    total = config.epochs * steps_per_epoch
    warmup = round((config.warmup_epochs or 0) * steps_per_epoch)
    if config.scheduler == "onecycle":
        rise = round(0.3 * total) if config.warmup_epochs is None else warmup
        return sched.LambdaLR(optimizer, partial(one_cycle, total=total, rise=rise))
    ramp = sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup) if warmup else None
    main = None
    if config.scheduler == "step" and config.step_size:
        main = sched.StepLR(optimizer, config.step_size * steps_per_epoch, config.gamma)
    elif config.scheduler == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    if ramp is None or main is None:
        return ramp or main
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def one_cycle(step: int, total: int, rise: int, div: float = 25.0, final_div: float = 1e4) -> float:
    """The factor of lr at `step` of torch's OneCycleLR (cosine, two phases): 1/div at step 0, 1
    at step rise - 1 (step 0 for a rise of one step), 1/(div * final_div) at the last step.
    torch's class divides by zero when a phase is shorter than two steps (a short test run); this
    is the same curve for any lengths (tests/test_extensions.py compares the two)."""
    peak = min(max(rise - 1, 0), total - 1)
    if step <= peak:
        start, end, pct = 1 / div, 1.0, step / peak if peak else 1.0
    else:
        start, end, pct = 1.0, 1 / (div * final_div), (step - peak) / max(total - 1 - peak, 1)
    return end + (start - end) * (1 + math.cos(math.pi * min(pct, 1.0))) / 2


def _progress(batches: Batches, desc: str, show: bool) -> tqdm:
    """A tqdm bar over `batches`; drawn only on a terminal (disable=None) and when `show`."""
    return tqdm(batches, desc=desc, unit="batch", leave=False, mininterval=0.5,
                disable=None if show else True)  # fmt: skip


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stopwatch:
    """Seconds spent in a block, with the device's queued work included (a sync at both ends)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> _Stopwatch:
        _sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start
