"""Does bf16 autocast keep the classifiers' accuracy? fp32 vs bf16, default params, several seeds.

    python benchmarks/bf16_accuracy.py                       # MLP and CNN, seeds 0 1 2
    python benchmarks/bf16_accuracy.py --only mlp --seeds 0 1 2 3 4
    python benchmarks/bf16_accuracy.py --epochs 2            # shorter, rougher

Trains on full-size synthetic data (the same images for every run; only the training seed
changes) with params.yaml's settings, once with `bf16: false` and once with `bf16: true`, and
prints test accuracy and seconds per epoch for each seed, the mean and spread of each format,
and the CPU (model and bf16-relevant flags) it ran on. The JSON goes to
reports/benchmarks/bf16_accuracy.json.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from appliedtorch.classify.params import ClassifierParams
from appliedtorch.classify.training.loop import train_classifier
from appliedtorch.data.loading import synthetic_in_memory
from appliedtorch.machine.hardware import cpu_description
from appliedtorch.params import load_params
from common import REPO, save

DATASET = {"mlp": ("mnist", 60000, 10000), "cnn": ("cifar10", 50000, 10000)}


def train_both(
    section: str, config: ClassifierParams, seeds: list[int], device: str
) -> list[dict[str, Any]]:
    """`config` in fp32 and in bf16 for each seed, on the section's full-size synthetic data."""
    name, n_train, n_test = DATASET[section]
    data = synthetic_in_memory(name, n_train, n_test, seed=0)
    runs = []
    for seed in seeds:
        for bf16 in (False, True):
            run = config.model_copy(update={"bf16": bf16, "compile": False})
            start = time.perf_counter()
            result = train_classifier(data, run, seed=seed, device=device)
            runs.append(
                {
                    "section": section,
                    "seed": seed,
                    "format": "bf16" if bf16 else "fp32",
                    "epochs": run.epochs,
                    "test_accuracy": result.evaluation.accuracy,
                    "epoch_seconds": result.train_seconds / run.epochs,
                    "wall_seconds": time.perf_counter() - start,
                }
            )
            r = runs[-1]
            print(
                f"{section} seed {seed} {r['format']}: test accuracy "
                f"{100 * r['test_accuracy']:.2f} %, {r['epoch_seconds']:.1f} s/epoch",
                flush=True,
            )
    return runs


def summarize(section: str, runs: list[dict[str, Any]]) -> None:
    """Each format's mean test accuracy (sd over seeds) and median seconds per epoch."""
    for fmt in ("fp32", "bf16"):
        accs = [r["test_accuracy"] for r in runs if r["format"] == fmt]
        secs = [r["epoch_seconds"] for r in runs if r["format"] == fmt]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(
            f"{section} {fmt}: mean test accuracy {100 * statistics.mean(accs):.2f} % "
            f"(sd {100 * spread:.2f}), median {statistics.median(secs):.1f} s/epoch"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="mlp,cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="default: params.yaml's")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/bf16_accuracy.json")
    args = parser.parse_args()
    p = load_params(args.params)
    out: dict = {"cpu": cpu_description(), "device": args.device, "runs": []}
    print(f"CPU: {out['cpu']['model']}; bf16 flags: {out['cpu']['bf16_flags'] or 'none'}")
    for section in args.only.split(","):
        config = getattr(p, section)
        config = config.model_copy(update={"epochs": args.epochs or config.epochs})
        runs = train_both(section, config, args.seeds, args.device)
        summarize(section, runs)
        out["runs"] += runs
    save("bf16_accuracy", out, args.json)


if __name__ == "__main__":
    main()
