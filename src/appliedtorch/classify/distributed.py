"""Data-parallel training with torch.distributed when launched by torchrun; a no-op otherwise.

    torchrun --standalone --nproc_per_node=2 stages/train_mlp.py --params params.yaml \
        --data data/raw/mnist --model models/mlp.pt --reports reports/mlp

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `launch` joins the process group they describe
(gloo on the CPU, nccl on CUDA, one GPU per local rank) and returns a `World`. Without them it
returns `SINGLE`, whose every method is the identity, so a one-process run is unchanged to the bit.

Sharding. Every rank holds the whole dataset in memory. Each epoch all ranks draw the same
permutation from the shared seed; rank r takes every WORLD_SIZE-th index of it from r on (the
permutation padded with its own first indices to a multiple of the world size, as
DistributedSampler does, so every rank runs the same number of steps). A step thus processes
one global batch of `batch_size` samples split into WORLD_SIZE rank batches of
`batch_size / WORLD_SIZE`; DistributedDataParallel averages the gradients, so the update is the
one-process update for the same global batch, up to the order of float sums. Augmentation and
dropout draw from per-rank random streams (the same stream on every rank would give every rank's
samples the same crops and masks).

Evaluation. The test set is cut into the one-process evaluation batches and rank r evaluates
batches r, r + WORLD_SIZE, ...: every batch is the same batch as in a one-process evaluation, so
each prediction is bit-identical to the one the saved model gives when it is reloaded and
checked. Loss sums and predictions are then combined across ranks; only rank 0 writes outputs
and logs to MLflow (`main_stage_run` gives the other ranks a run that records nothing).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import resolve_device

if TYPE_CHECKING:
    from appliedtorch.classify.loop import Evaluation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (size 1: no torch.distributed at all)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")  # where collectives run (cuda:LOCAL_RANK for nccl)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes outputs and logs to MLflow."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    def device_name(self, name: str) -> str:
        """The `device` param for this process: with several processes, CUDA means cuda:LOCAL_RANK."""
        if self.distributed and resolve_device(name).type == "cuda":
            return f"cuda:{self.local_rank}"
        return name

    def local_batch_size(self, batch_size: int, section: str) -> int:
        """Each process's share of a global batch of `batch_size` samples."""
        if batch_size % self.size:
            raise AppliedTorchError(
                f"{section}.batch_size ({batch_size}) must be divisible by the number of "
                f"processes ({self.size}): each process takes an equal share of every batch"
            )
        return batch_size // self.size

    def shard_size(self, n: int) -> int:
        """Samples each process trains on per epoch (n padded to a multiple of the world size)."""
        return math.ceil(n / self.size)

    def shard(self, perm: torch.Tensor) -> torch.Tensor:
        """This process's indices of an epoch's permutation: every size-th from `rank` on."""
        if not self.distributed:
            return perm
        pad = self.shard_size(len(perm)) * self.size - len(perm)
        if pad:
            perm = torch.cat([perm, perm[:pad]])
        return perm[self.rank :: self.size]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around `model` (which stays the module to save and export)."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else self.local_rank]
        return DistributedDataParallel(model, device_ids=ids if device.type == "cuda" else None)

    def seed_rank(self, seed: int) -> None:
        """After the (shared) weight init: give each process its own dropout stream."""
        if self.distributed:
            torch.manual_seed(seed + self.rank)

    def augment_generator(
        self, generator: torch.Generator, seed: int, device: torch.device
    ) -> torch.Generator:
        """The generator for crops and flips; per process, so the shared permutation stays shared."""
        if not self.distributed:
            return generator
        return torch.Generator(device=device).manual_seed(seed * 1_000_003 + 1 + self.rank)

    def mean(self, total: torch.Tensor, count: int) -> float:
        """Sum of `total` and of `count` over the processes; their ratio."""
        if not self.distributed:
            return float(total) / count
        both = torch.tensor([0.0, float(count)], dtype=torch.float64, device=self.device)
        both[0] = total.detach()
        self._all_reduce(both)
        return float(both[0] / both[1])

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is true on any (a collective: every process must call)."""
        if not self.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        self._all_reduce(t, torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def eval_indices(self, n: int, batch_size: int, rank: int | None = None) -> torch.Tensor:
        """Test-set rows of `rank`: the one-process evaluation batches rank, rank + size, ..."""
        rank = self.rank if rank is None else rank
        starts = range(rank * batch_size, n, self.size * batch_size)
        parts = [torch.arange(s, min(s + batch_size, n)) for s in starts]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def shard_eval(
        self, images: torch.Tensor, labels: torch.Tensor, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's part of the test set (see `eval_indices`)."""
        if not self.distributed:
            return images, labels
        idx = self.eval_indices(len(images), batch_size).to(images.device)
        return images[idx], labels[idx]

    def merge_evaluation(
        self, evaluation: Evaluation, labels: torch.Tensor, batch_size: int
    ) -> Evaluation:
        """The whole test set's evaluation from every process's part (rows back in order)."""
        if not self.distributed:
            return evaluation
        n = len(labels)
        parts = [self.eval_indices(n, batch_size, r) for r in range(self.size)]
        longest = max(len(p) for p in parts)
        mine = torch.full((longest,), -1, dtype=torch.int64)
        mine[: len(evaluation.predictions)] = evaluation.predictions
        gathered = [torch.empty(longest, dtype=torch.int64, device=self.device) for _ in parts]
        torch.distributed.all_gather(gathered, mine.to(self.device))
        predictions = torch.empty(n, dtype=torch.int64)
        for idx, got in zip(parts, gathered, strict=True):
            predictions[idx] = got[: len(idx)].cpu()
        # evaluate() returns the mean loss of this part; weight it back into a sum.
        loss_sum = torch.tensor([evaluation.loss * len(evaluation.labels)], dtype=torch.float64)
        seconds = torch.tensor([evaluation.seconds], dtype=torch.float64)
        loss_sum, seconds = loss_sum.to(self.device), seconds.to(self.device)
        self._all_reduce(loss_sum)
        self._all_reduce(seconds, torch.distributed.ReduceOp.MAX)  # the slowest part's time
        labels_cpu = labels.cpu()
        return dataclasses.replace(
            evaluation,
            loss=float(loss_sum) / max(n, 1),
            accuracy=float((predictions == labels_cpu).sum()) / max(n, 1),
            predictions=predictions,
            labels=labels_cpu,
            seconds=float(seconds),
        )

    def _all_reduce(self, t: torch.Tensor, op: Any = None) -> None:
        torch.distributed.all_reduce(t, op=op or torch.distributed.ReduceOp.SUM)


SINGLE = World()


def launch(device: str = "auto") -> World:
    """Join the process group that torchrun's environment describes; `SINGLE` without one.

    Backend: nccl when `device` resolves to CUDA (each process on cuda:LOCAL_RANK), else gloo.
    The group is left at interpreter exit. Ranks other than 0 log warnings only.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = resolve_device(device).type == "cuda"
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise AppliedTorchError(
                f"process with local rank {local_rank} has no GPU ({torch.cuda.device_count()} "
                "on this machine); start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    world = World(
        size=size,
        rank=rank,
        local_rank=local_rank,
        backend=backend,
        device=torch.device(f"cuda:{local_rank}" if cuda else "cpu"),
    )
    if not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group(backend)
        except Exception as exc:  # noqa: BLE001 - rendezvous failures come in many types
            raise AppliedTorchError(
                f"cannot join the {size}-process group ({backend}) as rank {rank}: {exc}"
            ) from None
        atexit.register(_leave)
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("process group: %d processes (%s), this is rank %d", size, backend, rank)
    return world


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class NullRun:
    """What ranks other than 0 get instead of an MLflow run: every call records nothing."""

    run_id = None

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def main_stage_run(world: World, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """`tracking.stage_run(*args, **kwargs)` on rank 0; a `NullRun` on the other ranks."""
    if not world.is_main:
        yield NullRun()
        return
    from appliedtorch.core.tracking import stage_run

    with stage_run(*args, **kwargs) as run:
        if world.distributed:
            run.set_tags(
                {"distributed.world_size": world.size, "distributed.backend": world.backend}
            )
        yield run
