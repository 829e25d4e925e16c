"""DVC stage `train_cnn`: the tutorial's 3-conv CNN on CIFAR-10 with crop+flip augmentation.

    python stages/train_cnn.py --params params.yaml --data data/raw/cifar10 \
        --model models/cnn.pt --reports reports/cnn

Writes models/cnn.pt (state dict + config, checked by reloading it) and reports/cnn/ (metrics.json,
history.csv, confusion.json and four figures); logs one MLflow run in experiment `cifar10-cnn`.
"""

from __future__ import annotations

from appliedtorch.classify.stage import parse_args, train_stage
from appliedtorch.core.cli import run_stage


def main() -> None:
    args = parse_args("cnn", __doc__.splitlines()[0])
    train_stage("cnn", args.params, args.data, args.model, args.reports)


if __name__ == "__main__":
    run_stage(main)
