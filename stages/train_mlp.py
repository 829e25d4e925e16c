"""DVC stage `train_mlp`: the tutorial's 784-128-128-10 MLP on MNIST, trained from memory.

    python stages/train_mlp.py --params params.yaml --data data/raw/mnist \
        --model models/mlp.pt --reports reports/mlp

Writes models/mlp.pt (state dict + config, checked by reloading it) and reports/mlp/ (metrics.json,
history.csv, confusion.json and four figures); logs one MLflow run in experiment `mnist-mlp`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliedtorch import distributed, training
from appliedtorch.checkpoint import Checkpointer, checkpoint_path, fingerprint
from appliedtorch.cli import run_stage
from appliedtorch.data import load_dataset
from appliedtorch.params import load_params, run_params
from appliedtorch.tracking import data_tags
from appliedtorch.utils import check_writable, resolve_device, seed_everything

DATASET, ARCH, EXPERIMENT = "mnist", "mlp", "mnist-mlp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path(f"data/raw/{DATASET}"))
    parser.add_argument("--model", type=Path, default=Path(f"models/{ARCH}.pt"))
    parser.add_argument("--reports", type=Path, default=Path(f"reports/{ARCH}"))
    args = parser.parse_args()

    p = load_params(args.params)
    check_writable(args.model.parent, args.reports)  # before any work, not after training
    world = distributed.launch(p.device)  # torchrun's process group; one process without it
    seed_everything(p.seed)
    data = load_dataset(DATASET, args.data)
    config = training.TrainConfig.from_section(
        ARCH, p.mlp, seed=p.seed, device=world.device_name(p.device)
    )
    tags = {
        **data_tags(DATASET, args.data, data.source),
        "device.resolved": resolve_device(p.device),
    }
    # Resumes a run killed mid-training (models/.<arch>.ckpt) if params and data are the same.
    ckpt = Checkpointer.open(checkpoint_path(args.model), fingerprint(run_params(p, ARCH), tags))
    with distributed.main_stage_run(  # the MLflow run on rank 0; one that records nothing elsewhere
        world, EXPERIMENT, f"train_{ARCH}", run_params(p, ARCH), p.tracking.uri, tags, ckpt.run_id
    ) as run:
        ckpt.run_id = run.run_id
        result = training.train_classifier(
            data,
            config,
            callback=lambda e: run.log_metrics(e.metrics(), step=e.epoch),
            checkpoint=None if world.distributed else ckpt,  # resuming: one process only
            world=world,
        )
        if not world.is_main:  # rank 0 alone writes the outputs
            return
        reloaded = training.save_verified_checkpoint(result, data, args.model)
        outputs = training.write_reports(result, data, args.reports)
        run.log_metrics(training.final_metrics(result, reloaded))
        run.log_artifacts(outputs)
        info = run.log_model(
            training.portable_model(result),
            "model",
            training.input_example(result, data),
            metadata=training.model_metadata(result, data),
        )
        if p.tracking.register_models:
            run.register_model(info, EXPERIMENT, reloaded.accuracy)
        ckpt.remove()  # every output is written: the next run starts fresh


if __name__ == "__main__":
    run_stage(main)
