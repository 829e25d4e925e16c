"""The body shared by the `train_mlp` and `train_cnn` stages: params → data → train → outputs → MLflow.

    python stages/train_mlp.py --params params.yaml --data data/raw/mnist \
        --model models/mlp.pt --reports reports/mlp

Under torchrun every rank trains its shard; rank 0 alone writes outputs and logs to MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliedtorch.classify import distributed, outputs
from appliedtorch.classify.budget import check_budget
from appliedtorch.classify.ensemble import check_launch, open_resume, train_seeds
from appliedtorch.classify.resume import fingerprint
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import check_writable, first_line, resolve_device, seed_everything
from appliedtorch.data.loading import load_dataset
from appliedtorch.params import load_params
from appliedtorch.tracking import data_tags, stage_run


def parse_args(arch: str, description: str) -> argparse.Namespace:
    """The stage's command line; defaults are the paths in dvc.yaml."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--data", type=Path, help=f"default: data/raw/<{arch}.dataset in the params file>"
    )
    parser.add_argument("--model", type=Path, default=Path(f"models/{arch}.pt"))
    parser.add_argument("--reports", type=Path, default=Path(f"reports/{arch}"))
    return parser.parse_args()


def train_stage(arch: str, params: Path, data_dir: Path | None, model: Path, reports: Path) -> None:
    """Train classifier `arch` ('mlp' or 'cnn') on its section's dataset, write its model file
    and reports, log one run."""
    p = load_params(params)
    section = getattr(p, arch)
    dataset = section.dataset
    data_dir = data_dir or Path("data/raw") / dataset
    check_launch(section)  # seeds > 1 under torchrun: one line, no work
    check_budget(p, arch)  # a device it lacks, or more memory than it has: one line, no work
    check_writable(model.parent, reports)  # before any work, not after training
    world = join(p.device)  # torchrun's process group; one process without it
    seed_everything(p.seed)
    data = load_dataset(dataset, data_dir)
    device = f"cuda:{world.local_rank}" if world.backend == "nccl" else p.device
    tags = {
        **data_tags(dataset, data_dir, data.source, data.file_md5),  # md5s read once
        "device.resolved": resolve_device(p.device),
    }
    logged_params = run_params(p, arch)
    # Resumes a run killed mid-training if params, data and the number of processes are the
    # same; under torchrun every rank restores rank 0's reading of the state (see resume.py).
    # With seeds > 1, one state per member: finished members are not trained again.
    resume = open_resume(model, fingerprint(logged_params, tags), world, section)
    with main_stage_run(  # the MLflow run on rank 0; one that records nothing elsewhere
        world,
        section.experiment,
        f"train_{arch}",
        logged_params,
        p.tracking.uri,
        tags,
        resume.run_id,
        system_metrics=p.tracking.system_metrics,
    ) as run:
        resume.run_id = run.run_id
        result = train_seeds(  # train_classifier, or each member and their ensemble
            data,
            section,
            seed=p.seed,
            device=device,
            callback=lambda e: run.log_metrics(e.metrics(), step=e.epoch),
            resume=resume,
            world=world,
        )
        if world.is_main:  # rank 0 alone writes the outputs
            outputs.write_outputs(result, data, run, model=model, reports=reports)
    if world.is_main:
        resume.remove()  # every output is written: the next run starts fresh


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
