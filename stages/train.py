"""DVC stages `train_mlp` and `train_cnn`: a classifier section's net on its dataset, from memory.

    python stages/train.py --params params.yaml --section mlp --model models/mlp.pt \
        --reports reports/mlp

The section (`mlp`: the tutorial's MLP; `cnn`: its CNN, or `cnn.arch: resnet`) names the
dataset (`mlp.dataset`, read from data/raw/<dataset> unless --data says otherwise), the net and
the recipe. Writes the model file (verified by reloading it) and reports/<section>/ (metrics.json,
history.csv, confusion.json, per_class.json, members.csv and four figures); logs one MLflow run
in the section's experiment (`mnist-mlp`, `cifar10-cnn`, ...). Under torchrun every rank trains
its shard; rank 0 alone writes outputs and logs.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
from pathlib import Path

from appliedtorch.classify.artifacts import outputs
from appliedtorch.classify.nets.budget import check_budget
from appliedtorch.classify.runs.ensemble import check_launch, open_resume, train_seeds
from appliedtorch.classify.runs.launch import join, main_stage_run
from appliedtorch.classify.runs.resume import fingerprint
from appliedtorch.core.cli import run_stage
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import check_writable, resolve_device, seed_everything
from appliedtorch.data.loading import load_dataset
from appliedtorch.params import load_params
from appliedtorch.tracking import data_tags

SECTIONS = ("mlp", "cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--section", choices=SECTIONS, required=True)
    parser.add_argument("--data", type=Path, help="default: data/raw/<the section's dataset>")
    parser.add_argument("--model", type=Path, required=True, help="e.g. models/mlp.pt")
    parser.add_argument("--reports", type=Path, required=True, help="e.g. reports/mlp")
    args = parser.parse_args()

    p = load_params(args.params)  # the whole file, validated before any work
    config = getattr(p, args.section)
    data_dir = args.data or Path("data/raw") / config.dataset
    check_launch(config)  # seeds > 1 under torchrun: one line, no work
    check_budget(p, args.section)  # a device it lacks, or more memory than it has: one line
    check_writable(args.model.parent, args.reports)  # before any work, not after training
    world = join(p.device)  # torchrun's process group; one process without it
    seed_everything(p.seed)
    data = load_dataset(config.dataset, data_dir)
    device = f"cuda:{world.local_rank}" if world.backend == "nccl" else p.device
    tags = {
        **data_tags(config.dataset, data_dir, data.source, data.file_md5),  # md5s read once
        "device.resolved": resolve_device(p.device),
    }
    logged = run_params(p, args.section)
    # Resumes a run killed mid-training if params, data and the number of processes are the
    # same (one state per member with seeds > 1: finished members are not trained again).
    resume = open_resume(args.model, fingerprint(logged, tags), world, config)
    with main_stage_run(  # the MLflow run on rank 0; one that records nothing elsewhere
        world,
        config.experiment,
        f"train_{args.section}",
        logged,
        p.tracking.uri,
        tags,
        resume.run_id,
        system_metrics=p.tracking.system_metrics,
    ) as run:
        resume.run_id = run.run_id
        result = train_seeds(  # train_classifier, or each member and their ensemble
            data,
            config,
            seed=p.seed,
            device=device,
            callback=lambda e: run.log_metrics(e.metrics(), step=e.epoch),
            resume=resume,
            world=world,
        )
        if world.is_main:  # rank 0 alone writes the outputs
            outputs.write_outputs(result, data, run, model=args.model, reports=args.reports)
    if world.is_main:
        resume.remove()  # every output is written: the next run starts fresh


if __name__ == "__main__":
    run_stage(main)
