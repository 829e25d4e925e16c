"""The tutorial's training loop for one epoch, in a process of its own, as a user runs the
tutorial: torch's OpenMP and malloc defaults, not the settings appliedtorch makes for its stages
(`benchmarks/epochs.py` times the project's loop in its own process, set up as a stage is). Prints
one JSON line: the seconds, the batches run and (with --accuracy) the test accuracy.

    python benchmarks/tutorial_loop.py cnn --train 5000 --test 1000 --batches 8

The one benchmark script that does not call `openmp.settle()`: it stands for a user who never
imports appliedtorch, so OpenMP starts with the environment this process was given.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import loops
from appliedtorch.data.loading import synthetic_in_memory
from appliedtorch.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=sorted(loops.DATASET))
    parser.add_argument("--train", type=int, required=True, help="synthetic training images")
    parser.add_argument("--test", type=int, required=True, help="synthetic test images")
    parser.add_argument("--batches", type=int, help="time only the first N batches")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--accuracy", action="store_true", help="also evaluate on the test set")
    args = parser.parse_args()
    data = synthetic_in_memory(loops.DATASET[args.section], args.train, args.test)
    config = loops.timed_section(load_params(args.params), args.section)
    # Untimed warm-up: oneDNN makes its kernels on first use, a GPU loads its own.
    loops.tutorial_epoch(data, config, 3, args.device, args.seed)
    model, seconds, done = loops.tutorial_epoch(data, config, args.batches, args.device, args.seed)
    result = {
        "seconds": seconds,
        "batches": done,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "accuracy": loops.accuracy(model, data) if args.accuracy else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
