"""DVC stage `train_mlp`: the tutorial's 784-128-128-10 MLP on MNIST, trained from memory.

    python stages/train_mlp.py --params params.yaml --data data/raw/mnist \
        --model models/mlp.pt --reports reports/mlp

Writes models/mlp.pt (state dict + config, checked by reloading it) and reports/mlp/ (metrics.json,
history.csv, confusion.json and four figures); logs one MLflow run in experiment `mnist-mlp`.
"""

from __future__ import annotations

from appliedtorch.classify.stage import parse_args, train_stage
from appliedtorch.core.cli import run_stage


def main() -> None:
    args = parse_args("mlp", __doc__.splitlines()[0])
    train_stage("mlp", args.params, args.data, args.model, args.reports)


if __name__ == "__main__":
    run_stage(main)
