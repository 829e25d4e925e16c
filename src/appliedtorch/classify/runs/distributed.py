"""Generic collectives for data-parallel training under torchrun; the identity in one process.

    torchrun --standalone --nproc_per_node=2 stages/train.py --params params.yaml \
        --section mlp --model models/mlp.pt --reports reports/mlp

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; `launch` joins the process group they describe
(gloo on the CPU, nccl on CUDA, one GPU per local rank) and returns a `World`. Without them it
returns `SINGLE`, whose every method is the identity, so a one-process run is unchanged to the bit.

A `World` knows nothing about models' metrics or params: it shards index sequences (`shard`,
`strided_batches`), wraps a model in DistributedDataParallel and combines plain numbers and
tensors across processes (`sum`, `max`, `any`, `all_gather`), and moves picklable objects
between rank 0 and the others (`gather_objects`, `broadcast_object`). What to shard and how to combine
an evaluation is decided where those live (`appliedtorch.classify.training.batches`, `.loop`).
This module imports no other project module.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The process group torchrun describes cannot be joined (the caller reports it)."""


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

    # ---- sharding: which indices this process takes ----

    def shard_size(self, n: int) -> int:
        """Items each process takes from n (n padded to a multiple of the world size)."""
        return math.ceil(n / self.size)

    def shard(self, indices: torch.Tensor) -> torch.Tensor:
        """This process's part of `indices`: every size-th from `rank` on.

        `indices` is first padded with its own first items to a multiple of the world size, as
        DistributedSampler does, so every process takes the same number.
        """
        if not self.distributed:
            return indices
        pad = self.shard_size(len(indices)) * self.size - len(indices)
        if pad:
            indices = torch.cat([indices, indices[:pad]])
        return indices[self.rank :: self.size]

    def strided_batches(self, n: int, batch_size: int, rank: int | None = None) -> torch.Tensor:
        """Rows of `rank` (default: this process) when batches of range(n) are dealt in turn.

        Rank r takes whole batches r, r + size, ...: every batch is the same batch as in one
        process, so per-batch results are bit-identical to a one-process pass.
        """
        rank = self.rank if rank is None else rank
        starts = range(rank * batch_size, n, self.size * batch_size)
        parts = [torch.arange(s, min(s + batch_size, n)) for s in starts]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around `model` (which stays the module to save and export)."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else self.local_rank]
        return DistributedDataParallel(model, device_ids=ids if device.type == "cuda" else None)

    # ---- collectives: every process must call them, in the same order ----

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) in every process's `module`: each
        process's last training forward updated its own, and rank 0's are what it saves."""
        if self.distributed:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer.data, src=0)

    def sum(self, *values: float) -> tuple[float, ...]:
        """Each value summed over the processes (in float64)."""
        return self._reduce(values, "SUM")

    def max(self, *values: float) -> tuple[float, ...]:
        """Each value's maximum over the processes."""
        return self._reduce(values, "MAX")

    def any(self, flag: bool) -> bool:
        """True on every process if `flag` is true on any."""
        return bool(self.max(float(flag))[0]) if self.distributed else flag

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every process's 1-D `tensor` (lengths may differ), in rank order, on the CPU."""
        if not self.distributed:
            return [tensor]
        dist = torch.distributed
        length = torch.tensor([len(tensor)], device=self.device)
        lengths = [torch.zeros_like(length) for _ in range(self.size)]
        dist.all_gather(lengths, length)
        counts = [int(n) for n in lengths]
        padded = torch.zeros(max(counts), dtype=tensor.dtype, device=self.device)
        padded[: len(tensor)] = tensor
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(gathered, padded)
        return [g[:n].cpu() for g, n in zip(gathered, counts, strict=True)]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every process's picklable `obj`, in rank order, on rank 0; None on the other ranks."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] | None = [None] * self.size if self.is_main else None
        torch.distributed.gather_object(obj, gathered, dst=0)
        return gathered

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable `obj` on every process (what the other ranks pass is ignored)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def _reduce(self, values: tuple[float, ...], op: str) -> tuple[float, ...]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t, op=getattr(torch.distributed.ReduceOp, op))
        return tuple(t.tolist())


SINGLE = World()


def launch(cuda: bool = False) -> World:
    """Join the process group that torchrun's environment describes; `SINGLE` without one.

    Backend: nccl with `cuda` (each process on cuda:LOCAL_RANK), else gloo. The group is left at
    interpreter exit. Ranks other than 0 log warnings only. Raises LaunchError.
    """
    size = _env_int("WORLD_SIZE", "1", 1)
    if size <= 1:
        return SINGLE
    rank, local_rank = _env_int("RANK", None, 0, size - 1), _env_int("LOCAL_RANK", "0", 0)
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise LaunchError(
                f"process with local rank {local_rank} has no GPU ({torch.cuda.device_count()} "
                "on this machine); start at most one process per GPU (--nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    world = World(size, rank, local_rank, backend, device)
    if not torch.distributed.is_initialized():
        try:
            torch.distributed.init_process_group(backend)
        except Exception as exc:  # noqa: BLE001 - rendezvous failures come in many types
            raise LaunchError(
                f"cannot join the {size}-process group ({backend}) as rank {rank}: {exc}"
            ) from None
        atexit.register(_leave)
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("process group: %d processes (%s), this is rank %d", size, backend, rank)
    return world


def _env_int(name: str, default: str | None, low: int, high: int = 1 << 20) -> int:
    """An integer torchrun's environment gives (WORLD_SIZE, RANK, ...); LaunchError naming the
    variable when it is missing, not a whole number or out of [low, high]."""
    raw = os.environ.get(name, default)
    if raw is None:
        raise LaunchError(
            f"{name} is not set, though WORLD_SIZE is (start the stage with torchrun)"
        )
    try:
        value = int(raw.strip())
    except ValueError:
        raise LaunchError(f"{name} must be a whole number (got {raw[:40]!r})") from None
    if not low <= value <= high:
        raise LaunchError(f"{name} must be between {low} and {high} (got {value})")
    return value


def _leave() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
