"""The body shared by the `train_mlp` and `train_cnn` stages: params → data → train → outputs → MLflow.

    python stages/train_mlp.py --params params.yaml --data data/raw/mnist \
        --model models/mlp.pt --reports reports/mlp

Under torchrun every rank trains its shard; rank 0 alone writes outputs and logs to MLflow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliedtorch.classify import distributed
from appliedtorch.classify import loop as training
from appliedtorch.classify.resume import Checkpointer, checkpoint_path, fingerprint
from appliedtorch.core.params import load_params, run_params
from appliedtorch.core.tracking import data_tags
from appliedtorch.core.utils import check_writable, resolve_device, seed_everything
from appliedtorch.data import load_dataset

# arch -> (dataset, MLflow experiment and registered model name)
CLASSIFIERS = {"mlp": ("mnist", "mnist-mlp"), "cnn": ("cifar10", "cifar10-cnn")}


def parse_args(arch: str, description: str) -> argparse.Namespace:
    """The stage's command line; defaults are the paths in dvc.yaml."""
    dataset = CLASSIFIERS[arch][0]
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=Path(f"data/raw/{dataset}"))
    parser.add_argument("--model", type=Path, default=Path(f"models/{arch}.pt"))
    parser.add_argument("--reports", type=Path, default=Path(f"reports/{arch}"))
    return parser.parse_args()


def train_stage(arch: str, params: Path, data_dir: Path, model: Path, reports: Path) -> None:
    """Train classifier `arch` ('mlp' or 'cnn'), write its model and reports, log one run."""
    dataset, experiment = CLASSIFIERS[arch]
    p = load_params(params)
    check_writable(model.parent, reports)  # before any work, not after training
    world = distributed.launch(p.device)  # torchrun's process group; one process without it
    seed_everything(p.seed)
    data = load_dataset(dataset, data_dir)
    section = getattr(p, arch)
    config = training.TrainConfig.from_section(
        arch, section, seed=p.seed, device=world.device_name(p.device)
    )
    tags = {
        **data_tags(dataset, data_dir, data.source),
        "device.resolved": resolve_device(p.device),
    }
    logged_params = run_params(p, arch)
    # Resumes a run killed mid-training (models/.<arch>.ckpt) if params and data are the same.
    ckpt = Checkpointer.open(checkpoint_path(model), fingerprint(logged_params, tags))
    resume_run = None if world.distributed else ckpt.run_id  # torchrun runs start fresh
    with distributed.main_stage_run(  # the MLflow run on rank 0; one that records nothing elsewhere
        world,
        experiment,
        f"train_{arch}",
        logged_params,
        p.tracking.uri,
        tags,
        resume_run,
        system_metrics=p.tracking.system_metrics,
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
        reloaded = training.save_verified_checkpoint(result, data, model)
        outputs = training.write_reports(result, data, reports)
        run.log_metrics(training.final_metrics(result, reloaded))
        run.log_artifacts(outputs)
        info = run.log_model(
            training.portable_model(result),
            "model",
            training.input_example(result, data),
            metadata=training.model_metadata(result, data),
        )
        if p.tracking.register_models:
            run.register_model(info, experiment, reloaded.accuracy)
        ckpt.remove()  # every output is written: the next run starts fresh
