"""`seeds: N` members trained together: one vmapped model whose every step steps all N members.

    python stages/train.py --section mlp ...   # mlp.seeds: 8, mlp.members_together: true
    members = train_together(data, params.mlp, seed=42)   # N TrainResults, as one after another

Member k is the run `train_classifier` would make with seed `seed + k`: its weights initialised
from that seed, its own shuffle and augmentation stream (the same generator, seeded alike), its
own dropout masks (`vmap(randomness="different")`: the masks differ between members, but are not
member k's sequential masks). The members' parameters are stacked along a first dimension
(`torch.func.stack_module_state`); one forward through `functional_call` under `vmap` gives the
N losses, their sum one backward, and one optimizer steps the stacked tensors: Adam, AdamW and
SGD act element by element, so that is each member's own step. With dropout 0 the members equal
the sequential ones within float tolerance (tests/test_members.py). On a GPU, N small launch-bound
runs become one; on the CPU one after another measured faster (benchmarks/members.py), so `auto`
picks this on CUDA only.

Where it cannot apply (`fallback`), the members train one after another, said in one log line.
A killed together-run writes no resume state: its rerun starts the members afresh.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.runs.distributed import SINGLE, World
from appliedtorch.classify.training.batches import Batches, Normalizer
from appliedtorch.classify.training.loop import (
    CHECK_EVERY,
    Stopwatch,
    evaluate,
    local_batch_size,
    make_batches,
    model_args_for,
    net_name,
    normalization,
    resolve_tuning,
)
from appliedtorch.classify.training.optim import make_optimizer, make_scheduler
from appliedtorch.classify.training.progress import Progress
from appliedtorch.classify.training.results import EpochStats, Evaluation, TrainResult
from appliedtorch.classify.training.steps import autocast
from appliedtorch.core.errors import DivergenceError
from appliedtorch.core.utils import resolve_device, thread_count
from appliedtorch.machine.hardware import flush_denormals, keep_freed_memory

if TYPE_CHECKING:
    from appliedtorch.classify.params import ClassifierParams
    from appliedtorch.data.loading import ImageData

log = logging.getLogger(__name__)

Callback = Callable[[EpochStats], None]


def fallback(config: ClassifierParams, resumed: bool, world: World = SINGLE) -> str | None:
    """Why the members cannot train together here (None: they can)."""
    s = config.section
    if config.batch_norm:
        return f"{s}.batch_norm: its running statistics are buffers a vmapped step cannot update"
    if config.compile:
        return f"{s}.compile: torch.compile of the vmapped step is not supported here"
    if world.distributed or os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        return "torchrun: the members' run is one process"
    if resumed:
        return "a killed run's members resume one after another, where they stopped"
    return None


def together(
    config: ClassifierParams, device: str, *, resumed: bool = False, world: World = SINGLE
) -> bool:
    """Whether the `seeds` members train as one vmapped model: `members_together` true, or auto
    on CUDA (on the CPU one after another was faster: benchmarks/members.py), and nothing in
    `fallback`; a fallback from a choice that wanted them together is logged in one line."""
    wanted = config.members_together
    if config.seeds == 1 or wanted is False:
        return False
    if wanted == "auto" and resolve_device(device).type != "cuda":
        return False
    reason = fallback(config, resumed, world)
    if reason is not None:
        log.info("members train one after another, not together: %s", reason)
    return reason is None


class StackedBatches:
    """Every member's batches, stacked: (N, B, C, H, W) float32 images and (N, B) labels. Member
    k's shuffle (and augmentation) generator is its own, seeded as its sequential run's."""

    def __init__(self, train: Batches, generators: Sequence[torch.Generator], augment: bool):
        self.members = []
        for g in generators:  # shallow copies: the dataset on the device is shared
            member = copy.copy(train)
            member.shuffle, member.augment = g, (g if augment else None)
            self.members.append(member)
        self.samples, self.device = train.samples, train.device

    def __len__(self) -> int:
        return len(self.members[0])

    def sizes(self) -> torch.Tensor:
        """The number of samples in each batch (the same for every member)."""
        return self.members[0].sizes()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = self.members[0]
        if first.normalized is None or first.shuffle is None:  # augmented: each member's draws
            for batches in zip(*self.members, strict=True):
                yield torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])
            return
        # Normalised once: every member's permutation drawn as its `Batches` draws it, then one
        # gather per step for all members (N gathers and a stack were N times the launches).
        n = len(first.images)
        rows = torch.stack(
            [
                m.world.shard(torch.randperm(n, generator=m.shuffle, device=m.device))
                for m in self.members
            ]
        )  # (N, samples)
        for start in range(0, self.samples, first.batch_size):
            at = rows[:, start : start + first.batch_size]  # (N, B)
            yield first.normalized[at], first.labels[at]  # (N, B, C, H, W), (N, B)


class VmappedStep:
    """Forward, loss and backward of all members at once, then one step of the stacked tensors."""

    def __init__(
        self,
        model: nn.Module,
        members: Sequence[nn.Module],
        config: ClassifierParams,
        bf16: bool = False,
    ):
        self.params, self.buffers = stack_module_state(list(members))  # (N, ...) leaves
        self.base = copy.deepcopy(model).to("meta")  # the structure functional_call runs
        self.base.train()
        self.label_smoothing, self.bf16 = config.label_smoothing, bf16
        self.losses = vmap(self._loss, randomness="different")

    def _loss(self, params, buffers, images, labels):  # type: ignore[no-untyped-def]
        with autocast(images.device, self.bf16):
            logits = functional_call(self.base, (params, buffers), (images,))
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def __call__(
        self, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        losses = self.losses(self.params, self.buffers, images, labels)  # (N,)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # member k's loss reaches only member k's slice
        optimizer.step()
        return losses.detach()

    @torch.no_grad()
    def copy_into(self, members: Sequence[nn.Module]) -> None:
        """Member k's slice of every stacked parameter into member k's own module."""
        for k, member in enumerate(members):
            for name, p in member.named_parameters():
                p.copy_(self.params[name][k])


def check_losses(values: torch.Tensor, epoch: int, lr: float, section: str) -> None:
    """Stop on the first NaN or infinite loss of any member (`values`: (steps, N))."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        step, member = (int(i) for i in bad.nonzero()[0])
        raise DivergenceError(
            f"training diverged: member {member}'s loss became {float(values[step, member])} at "
            f"epoch {epoch}, step {step + 1} (lr {lr:g}); lower {section}.lr in params.yaml"
        )


def train_together(
    data: ImageData,
    config: ClassifierParams,
    *,
    seed: int = 0,
    device: str = "cpu",
    callbacks: Sequence[Callback] = (),
) -> list[TrainResult]:
    """The `config.seeds` members (member k: seed + k) trained as one vmapped model; each
    member's result as `train_classifier` would give it. `callbacks[k]` gets member k's epochs."""
    dev = resolve_device(device)
    keep_freed_memory(dev)
    mean, std = normalization(data)
    normalize = Normalizer(mean, std, dev, config.channels_last)
    model_args = model_args_for(config, data)
    members, generators = build_members(config, model_args, dev, seed)
    batch_size = local_batch_size(config, SINGLE)
    train, test = make_batches(
        data, config, batch_size, normalize, generators[0], generators[0], SINGLE
    )
    stacked = StackedBatches(train, generators, config.augment)
    tuning = resolve_tuning(members[0], config, stacked.members[0], dev, SINGLE, None)
    step = VmappedStep(members[0], members, config, bf16=tuning.bf16)
    optimizer = make_optimizer(list(step.params.values()), config, dev, members_dim=True)
    scheduler = make_scheduler(optimizer, config, len(stacked))
    histories: list[list[EpochStats]] = [[] for _ in members]
    with thread_count(tuning.threads), flush_denormals(dev):
        for epoch in range(1, config.epochs + 1):
            stats, evaluations = run_epoch(
                epoch, config, step, optimizer, scheduler, stacked, members, test
            )
            for k, s in enumerate(stats):
                histories[k].append(s)
                if k < len(callbacks):
                    callbacks[k](s)
    return [
        TrainResult(
            model=member.eval(),
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
        for member, history, evaluation in zip(members, histories, evaluations, strict=True)
    ]


def build_members(
    config: ClassifierParams, model_args: dict[str, Any], device: torch.device, seed: int
) -> tuple[list[nn.Module], list[torch.Generator]]:
    """Each member's net and generator, made as `loop.train_classifier` makes them for seed + k."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    members, generators = [], []
    for k in range(config.seeds):
        torch.manual_seed(seed + k)  # member k's weight init, as its own run's
        model = build_model(net_name(config), **model_args).to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        members.append(model)
        generators.append(torch.Generator(device=device).manual_seed(seed + k))
    return members, generators


def run_epoch(
    epoch: int,
    config: ClassifierParams,
    step: VmappedStep,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    batches: StackedBatches,
    members: Sequence[nn.Module],
    test: Batches,
) -> tuple[list[EpochStats], list[Evaluation]]:
    """One epoch of every member, then each member's evaluation; each member is credited an
    equal share of the epoch's training time (summed, they are what the run cost)."""
    lr = optimizer.param_groups[0]["lr"]
    values = torch.zeros(len(batches), len(members), device=batches.device)
    progress = Progress(batches, epoch, config.epochs)
    with Stopwatch(batches.device) as clock:
        for i, (images, labels) in enumerate(progress):
            values[i] = step(optimizer, images, labels)
            if scheduler is not None:
                scheduler.step()
            if (i + 1) % CHECK_EVERY == 0:
                check_losses(values[: i + 1], epoch, lr, config.section)
    progress.close()
    check_losses(values, epoch, lr, config.section)
    train_losses = (values * batches.sizes()[:, None]).sum(0) / batches.samples
    step.copy_into(members)
    evaluations = [evaluate(member, test, step.bf16) for member in members]
    share = clock.seconds / len(members)
    out = [
        EpochStats(epoch, float(loss), ev.loss, ev.accuracy, share, ev.seconds, lr)
        for loss, ev in zip(train_losses, evaluations, strict=True)
    ]
    log.info(
        "epoch %d: %d members together: mean train loss %.4f, mean test acc %.2f%%, %.1f s",
        epoch,
        len(members),
        sum(s.train_loss for s in out) / len(out),
        100 * sum(s.test_accuracy for s in out) / len(out),
        clock.seconds,
    )
    return out, evaluations
