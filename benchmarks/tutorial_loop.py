"""The tutorial's training loop for one epoch, in a process of its own, as a user runs the
tutorial: torch's OpenMP and malloc defaults, not the settings appliedtorch makes for its stages
(`benchmarks/run.py` times the project's loop in its own process, set up as a stage is). Prints
one JSON line: the seconds, the batches run and (with --accuracy) the test accuracy.

    python benchmarks/tutorial_loop.py cnn --train 5000 --test 1000 --batches 8
"""

from __future__ import annotations

# ruff: noqa: E402 - the imports below follow the reading of OMP_WAIT_POLICY
import os

# Read before anything imports appliedtorch, which sets its own default in os.environ.
OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

import argparse
import json
from pathlib import Path

# torch before appliedtorch: OpenMP starts with the environment this process was given.
import torch  # isort: skip
import train_speed  # isort: skip
from appliedtorch.data.loading import synthetic_in_memory
from appliedtorch.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(train_speed.DATASET))
    parser.add_argument("--train", type=int, required=True, help="synthetic training images")
    parser.add_argument("--test", type=int, required=True, help="synthetic test images")
    parser.add_argument("--batches", type=int, help="time only the first N batches")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accuracy", action="store_true", help="also evaluate on the test set")
    args = parser.parse_args()
    data = synthetic_in_memory(train_speed.DATASET[args.arch], args.train, args.test)
    base = train_speed.timed_section(load_params(args.params), args.arch)
    # Untimed warm-up: oneDNN makes its kernels on first use, a GPU loads its own.
    train_speed.tutorial_epoch(args.arch, data, base, 3, args.device, args.seed)
    model, seconds, done = train_speed.tutorial_epoch(
        args.arch, data, base, args.batches, args.device, args.seed
    )
    result = {
        "seconds": seconds,
        "batches": done,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": OMP_WAIT_POLICY,
        "accuracy": train_speed.accuracy(model, data) if args.accuracy else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
