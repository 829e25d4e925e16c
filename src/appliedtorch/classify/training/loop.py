"""The classifier training loop: `train_one_epoch` and `evaluate`, composed by `train_classifier`.

    >>> config = MLPParams(epochs=5, batch_size=64, lr=1e-3)
    >>> result = train_classifier(load_dataset("mnist", "data/raw/mnist"), config, seed=42)
    >>> result.evaluation.accuracy
    0.97...

The classifier is configured by its params section (`params.mlp` or `params.cnn`) and nothing
else; the nets' own defaults are their constructors'. The data stays on the training device and
`Batches` (see `appliedtorch.classify.training.batches`) owns shuffling, sharding, augmentation and
normalisation, so an epoch is `for images, labels in batches:` as in pytorch/examples' `train()`.
The loop knows nothing about MLflow: it returns a history and calls `callback(epoch_stats)`
after each epoch.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from appliedtorch.classify.nets.models import NETS, build_model
from appliedtorch.classify.runs.distributed import SINGLE, World
from appliedtorch.classify.training.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.training.optim import make_optimizer, make_scheduler
from appliedtorch.classify.training.progress import Progress
from appliedtorch.classify.training.results import EpochStats, Evaluation, TrainResult
from appliedtorch.classify.training.steps import autocast, training_step
from appliedtorch.classify.training.tuning import Tuning, first_batch, tune
from appliedtorch.core.errors import AppliedTorchError, DivergenceError
from appliedtorch.core.utils import resolve_device, thread_count
from appliedtorch.machine.hardware import flush_denormals, keep_freed_memory

if TYPE_CHECKING:
    from appliedtorch.classify.params import ClassifierParams
    from appliedtorch.classify.runs.resume import ResumeState
    from appliedtorch.data.loading import ImageData

log = logging.getLogger(__name__)

# How often (in steps) the loop looks at the losses: every look is a host-device sync on a GPU.
CHECK_EVERY = 50


# --------------------------------------------------------------------------------------------
# One epoch of training, one evaluation


class StepLosses:
    """One epoch's step losses, kept on the device: the host looks every CHECK_EVERY steps.

    Raises DivergenceError naming the first step with a NaN or infinite loss; with several
    processes all of them stop together (one alone would leave the others waiting).
    """

    def __init__(self, batches: Batches, epoch: int, lr: float, section: str, bar: Any = None):
        self.batches, self.epoch, self.lr, self.section, self.bar = batches, epoch, lr, section, bar
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
        advice = f"(lr {self.lr:g}); lower {self.section}.lr in params.yaml"
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
    step = training_step(net, optimizer, bf16=bf16, label_smoothing=label_smoothing)
    for images, labels in batches:
        losses.append(step(images, labels))
        if scheduler is not None:
            scheduler.step()
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
        with autocast(images.device, bf16):
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
    config: ClassifierParams,
    *,
    seed: int = 0,
    device: str = "cpu",
    callback: Callable[[EpochStats], None] | None = None,
    resume: ResumeState | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """Train the net `config` describes on `data` (in memory), evaluating after every epoch.

    With `resume`, the resume state is saved after every epoch, and a loaded one is resumed from
    (under torchrun on every process: each saves and restores its own random streams).
    With a distributed `world` (torchrun), each process trains on its shard of every epoch's
    permutation and the metrics are combined across processes.
    """
    if resume is not None and resume.world != world:
        raise ValueError("the resume state belongs to another process group than `world`")
    dev = resolve_device(device)
    batch_size = local_batch_size(config, world)  # a bad split fails before any work
    keep_freed_memory(dev)  # for the probe's steps too
    mean, std = normalization(data)
    normalize = Normalizer(mean, std, dev, config.channels_last)
    model_args = model_args_for(config, data)
    model, net, optimizer, shuffle, augment = _build(config, model_args, dev, seed, world)
    train, test = make_batches(data, config, batch_size, normalize, shuffle, augment, world)
    scheduler = make_scheduler(optimizer, config, len(train))
    tuning = resolve_tuning(model, config, train, dev, world, resume)
    streams = {"shuffle": shuffle, "augment": augment}  # one generator in one process
    done = resume.restore(model, optimizer, scheduler, streams) if resume else 0
    history = [EpochStats(**h) for h in resume.history] if resume else []
    run = _Epochs(config, net, model, optimizer, scheduler, train, test, tuning.bf16, world)
    with thread_count(tuning.threads), flush_denormals(dev):
        for epoch in range(done + 1, config.epochs + 1):
            history.append(run.epoch(epoch))
            if callback is not None:
                callback(history[-1])
            if resume is not None:
                dicts = [dataclasses.asdict(h) for h in history]
                resume.save(epoch, model, optimizer, scheduler, streams, dicts, tuning.as_record())
        # resumed after the last epoch: only the final evaluation is left
        evaluation = run.evaluation or run.evaluate()
    model.eval()
    return TrainResult(
        model=model,
        config=config,
        bf16=tuning.bf16,
        history=history,
        evaluation=evaluation,
        classes=list(data.classes),
        mean=mean,
        std=std,
        model_args=model_args,
        train_samples=len(train.images),
        tuning=tuning,
    )


def resolve_tuning(
    model: nn.Module,
    config: ClassifierParams,
    train: Batches,
    device: torch.device,
    world: World,
    resume: ResumeState | None,
) -> Tuning:
    """bf16 and threads: explicit, or `auto` timed on a copy of the model (the run is unchanged);
    a resumed run keeps the choice it started with, so it ends as an uninterrupted one would."""
    kept = resume.tuning if resume is not None else None
    return (Tuning.from_record(kept) if kept else None) or tune(
        model,
        lambda m: make_optimizer(m, config, device),
        first_batch(train),
        device,
        bf16=config.bf16,
        threads=config.threads,
        label_smoothing=config.label_smoothing,
        world=world,
        run_steps=config.epochs * len(train),
    )


class _Epochs:
    """One epoch at a time: train, evaluate, log a line; keeps the last evaluation."""

    def __init__(
        self,
        config: ClassifierParams,
        net: nn.Module,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        train: Batches,
        test: Batches,
        bf16: bool,
        world: World,
    ):
        self.config, self.net, self.model, self.world = config, net, model, world
        self.optimizer, self.scheduler, self.train, self.test = optimizer, scheduler, train, test
        self.bf16 = bf16
        self.evaluation: Evaluation | None = None

    def evaluate(self) -> Evaluation:
        self.evaluation = evaluate(
            _evaluated(self.net, self.model, self.world), self.test, self.bf16
        )
        return self.evaluation

    def epoch(self, epoch: int) -> EpochStats:
        s = self.config
        lr = self.optimizer.param_groups[0]["lr"]
        progress = Progress(self.train, epoch, s.epochs, show=self.world.is_main)
        with Stopwatch(self.train.device) as clock:
            losses = StepLosses(self.train, epoch, lr, s.section, progress)
            train_loss = train_one_epoch(
                self.net,
                progress,
                self.optimizer,
                losses,
                bf16=self.bf16,
                scheduler=self.scheduler,
                label_smoothing=s.label_smoothing,
            )
        progress.close()
        ev = self.evaluate()
        log.info(
            "epoch %d: train loss %.4f, test loss %.4f, test acc %.2f%%, %.1f s",
            epoch,
            train_loss,
            ev.loss,
            100 * ev.accuracy,
            clock.seconds,
        )
        return EpochStats(epoch, train_loss, ev.loss, ev.accuracy, clock.seconds, ev.seconds, lr)


def _evaluated(net: nn.Module, model: nn.Module, world: World) -> nn.Module:
    """The module that evaluates: `net`, or under torchrun the unwrapped model holding rank 0's
    buffers. DistributedDataParallel broadcasts buffers (batch norm's) in every forward, a
    collective that a process with no test batch would never join: the others would hang."""
    if not world.distributed:
        return net
    world.broadcast_buffers(model)
    return model


def net_name(config: ClassifierParams) -> str:
    """The net the config trains: its name in `models.NETS` and the model file's `net`."""
    return "resnet" if config.section == "cnn" and config.arch == "resnet" else config.section


def model_args_for(config: ClassifierParams, data: ImageData) -> dict[str, Any]:
    """Constructor arguments of the network this section's config describes, for this dataset.

    An argument equal to the constructor's own default is left out unless the net always
    records it (`always_saved`): a model file trained with the tutorial's settings holds the
    arguments it always held, and the same bytes.
    """
    _, c, h, w = data.train_images.shape
    name = net_name(config)
    shared = {"num_classes": len(data.classes), "dropout": config.dropout}
    if name == "mlp":
        args = {
            "in_features": c * h * w,
            "hidden_size": config.hidden_size,
            "hidden_layers": config.hidden_layers,
            "residual": config.arch == "residual",
            **shared,
        }
    else:
        args = {"in_channels": c, "width": config.width, "flip_tta": config.flip_tta, **shared}
        args |= {"image_size": h} if name == "cnn" else {}
    args["batch_norm"] = config.batch_norm
    cls = NETS[name]
    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    ordered = [k for k in defaults if k in args]  # the constructor's order: same file bytes
    return {k: args[k] for k in ordered if k in cls.always_saved or args[k] != defaults[k]}


def normalization(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The dataset's per-channel (mean, std), checked against its number of channels."""
    mean, std = NORMALIZATION.get(data.name, NORMALIZATION["cifar10"])
    if len(mean) != data.train_images.shape[1]:
        raise AppliedTorchError(
            f"dataset '{data.name}' has {data.train_images.shape[1]} channel(s) "
            f"but its normalisation has {len(mean)}"
        )
    return mean, std


def _build(
    config: ClassifierParams,
    model_args: dict[str, Any],
    device: torch.device,
    seed: int,
    world: World,
) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer, torch.Generator, torch.Generator]:
    """Model, the module to call (DDP, compiled), optimizer and the random streams."""
    torch.manual_seed(seed)  # weight init and dropout
    shuffle = torch.Generator(device=device).manual_seed(seed)  # permutation, augmentation
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(net_name(config), **model_args).to(device)
    augment = shuffle
    if world.distributed:
        # After the shared weight init, each process draws its own dropout masks, crops and flips
        # (the same stream everywhere would give every shard the same ones); the permutation's
        # stream stays shared, so the shards of an epoch never overlap.
        torch.manual_seed(seed + world.rank)
        augment = torch.Generator(device=device).manual_seed(seed * 1_000_003 + 1 + world.rank)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = world.wrap(model, device)  # DistributedDataParallel with several processes
    net = torch.compile(net) if config.compile else net
    optimizer = make_optimizer(model, config, device)
    return model, net, optimizer, shuffle, augment


def make_batches(
    data: ImageData,
    config: ClassifierParams,
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
        data.test_images[:limit],
        data.test_labels[:limit],
        config.eval_batch_size,
        normalize,
        world=world,
    )
    if len(train.images) == 0 or len(test.images) == 0:
        raise AppliedTorchError(f"dataset '{data.name}' has no training or no test samples")
    if config.batch_norm and train.samples < 2:
        raise AppliedTorchError(
            f"{config.section}.batch_norm needs at least 2 training samples per process (got "
            f"{train.samples}; raise {config.section}.train_limit)"
        )
    return train, test


def local_batch_size(config: ClassifierParams, world: World) -> int:
    """Each process's share of a global batch of `config.batch_size` samples."""
    if config.batch_size % world.size:
        raise AppliedTorchError(
            f"{config.section}.batch_size ({config.batch_size}) must be divisible by the number of "
            f"processes ({world.size}): each process takes an equal share of every batch"
        )
    if config.batch_norm and config.batch_size // world.size < 2:
        raise AppliedTorchError(
            f"{config.section}.batch_norm needs at least 2 samples per process in a batch "
            f"({config.section}.batch_size {config.batch_size} on {world.size} processes)"
        )
    return config.batch_size // world.size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Seconds spent in a block, with the device's queued work included (a sync at both ends)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> Stopwatch:
        _sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start
