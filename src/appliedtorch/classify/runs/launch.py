"""Where a training stage's processes meet: torchrun's process group and the MLflow run that
rank 0 alone keeps.

    world = join(p.device)                       # one process without torchrun
    with main_stage_run(world, experiment, stage, params, uri, tags) as run:
        ...                                      # rank 0: an MLflow run; others: a NullRun
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from appliedtorch.classify.runs import distributed
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import first_line, resolve_device
from appliedtorch.tracking import stage_run


def join(device: str) -> distributed.World:
    """torchrun's process group (nccl when `device` is a GPU, else gloo); one process without."""
    try:
        return distributed.launch(cuda=resolve_device(device).type == "cuda")
    except distributed.LaunchError as exc:
        raise AppliedTorchError(first_line(exc)) from None


class NullRun:
    """What ranks other than 0 get instead of an MLflow run: it records nothing."""

    run_id = None

    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        """Nothing: rank 0 logs the metrics, combined over every process."""


@contextlib.contextmanager
def main_stage_run(world: distributed.World, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """`tracking.stage_run(*args, **kwargs)` on rank 0; a `NullRun` on the other ranks."""
    if not world.is_main:
        yield NullRun()
        return
    with stage_run(*args, **kwargs) as run:
        if world.distributed:
            run.set_tags(
                {"distributed.world_size": world.size, "distributed.backend": world.backend}
            )
        yield run
