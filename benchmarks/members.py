"""`seeds: N` members trained together (one vmapped model) against one after another, and one seed.

    python benchmarks/members.py                        # mlp, 1, 4 and 8 members, 10,000 images
    python benchmarks/members.py --section cnn --seeds 1,4 --train 2000 --device cuda
    python benchmarks/members.py --quick                # tiny sizes: a smoke run (tests run it)

Each run is `train_seeds` with params.yaml's section (one epoch over the first `--train` synthetic
images of the upstream size), `members_together` forced true or false; the seconds are the
training passes alone (the members' summed epoch times: what the run cost; evaluation, `auto`'s
probe and building aside), the best of `--reps` runs. The figures decide `members_together:
auto` (classify/runs/together.py): together only where it measures faster. Prints JSON with the
CPU's name, the GPU's (if any) and the load average, which on a shared machine matters.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import json
import os
import platform
from typing import Any

import torch

from appliedtorch.classify.params import ClassifierParams
from appliedtorch.classify.runs.ensemble import train_seeds
from appliedtorch.data.loading import ImageData, synthetic_in_memory
from appliedtorch.machine.hardware import cpu_description
from appliedtorch.params import load_params

DATASET = {"mlp": "mnist", "cnn": "cifar10"}


def training_seconds(
    data: ImageData, config: ClassifierParams, seeds: int, together: bool, device: str
) -> float:
    """Seconds of the training passes of one run of `seeds` members (together or not)."""
    run = config.model_copy(update={"seeds": seeds, "members_together": together})
    result = train_seeds(data, run, seed=0, device=device)
    return sum(h.epoch_seconds for h in result.history)


def best_of(reps: int, *args: Any) -> float:
    """The fastest of `reps` runs (the least disturbed by other work on the machine)."""
    return min(training_seconds(*args) for _ in range(reps))


def measure(
    section: str,
    seeds: list[int],
    *,
    train: int,
    device: str = "cpu",
    reps: int = 2,
    params: str = "params.yaml",
) -> dict[str, Any]:
    """One seed, then each count of members one after another and together; seconds and ratios."""
    config = getattr(load_params(params), section).model_copy(
        update={"epochs": 1, "train_limit": train, "dataset": DATASET[section]}
    )
    data = synthetic_in_memory(DATASET[section], train, min(train, 1000))
    best_of(1, data, config, 2, True, device)  # warm-up: first calls, `auto`'s cached choice
    one = best_of(reps, data, config, 1, False, device)
    rows = []
    for n in seeds:
        apart = one if n == 1 else best_of(reps, data, config, n, False, device)
        joint = best_of(reps, data, config, n, True, device) if n > 1 else one
        rows.append(
            {
                "members": n,
                "sequential_seconds": apart,
                "together_seconds": joint,
                "together_speedup": apart / joint,
                "together_vs_one_seed": joint / one,
            }
        )
    return {"section": section, "train_images": train, "one_seed_seconds": one, "rows": rows}


def machine(device: str) -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cpu": cpu_description(),
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--section", choices=sorted(DATASET), default="mlp")
    parser.add_argument("--seeds", default="1,4,8", help="member counts, comma-separated")
    parser.add_argument("--train", type=int, default=10_000, help="training images")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train, args.reps = "1,2", 256, 1
    seeds = [int(s) for s in args.seeds.split(",")]
    out = machine(args.device)
    out |= measure(
        args.section,
        seeds,
        train=args.train,
        device=args.device,
        reps=args.reps,
        params=args.params,
    )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
