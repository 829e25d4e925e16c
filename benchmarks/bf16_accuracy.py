"""Does bf16 autocast keep the classifiers' accuracy? fp32 vs bf16, default params, several seeds.

    python benchmarks/bf16_accuracy.py                       # MLP and CNN, seeds 0 1 2
    python benchmarks/bf16_accuracy.py --only mlp --seeds 0 1 2 3 4
    python benchmarks/bf16_accuracy.py --epochs 2            # shorter, rougher

Trains on full-size synthetic data (the same images for every run; only the training seed
changes) with params.yaml's settings, once with `bf16: false` and once with `bf16: true`, and
prints test accuracy and seconds per epoch for each seed, the mean and spread of each format,
and the CPU (model and bf16-relevant flags) it ran on. The JSON goes to
reports/bf16_accuracy.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from appliedtorch.classify.training.loop import train_classifier
from appliedtorch.data.loading import synthetic_in_memory
from appliedtorch.machine.hardware import cpu_description
from appliedtorch.params import load_params

REPO = Path(__file__).resolve().parents[1]
DATASET = {"mlp": ("mnist", 60000, 10000), "cnn": ("cifar10", 50000, 10000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="mlp,cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="default: params.yaml's")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--json", type=Path, default=REPO / "reports" / "bf16_accuracy.json")
    args = parser.parse_args()

    p = load_params(args.params)
    out: dict = {"cpu": cpu_description(), "device": args.device, "runs": []}
    print(f"CPU: {out['cpu']['model']}; bf16 flags: {out['cpu']['bf16_flags'] or 'none'}")
    for arch in args.only.split(","):
        name, n_train, n_test = DATASET[arch]
        data = synthetic_in_memory(name, n_train, n_test, seed=0)
        section = getattr(p, arch)
        for seed in args.seeds:
            for bf16 in (False, True):
                changes = {"bf16": bf16, "compile": False, "epochs": args.epochs or section.epochs}
                config = section.model_copy(update=changes)
                start = time.perf_counter()
                result = train_classifier(data, config, seed=seed, device=args.device)
                run = {
                    "arch": arch,
                    "seed": seed,
                    "format": "bf16" if bf16 else "fp32",
                    "epochs": config.epochs,
                    "test_accuracy": result.evaluation.accuracy,
                    "epoch_seconds": result.train_seconds / config.epochs,
                    "wall_seconds": time.perf_counter() - start,
                }
                out["runs"].append(run)
                print(
                    f"{arch} seed {seed} {run['format']}: test accuracy "
                    f"{100 * run['test_accuracy']:.2f} %, {run['epoch_seconds']:.1f} s/epoch",
                    flush=True,
                )
        for fmt in ("fp32", "bf16"):
            accs = [
                r["test_accuracy"] for r in out["runs"] if r["arch"] == arch and r["format"] == fmt
            ]
            secs = [
                r["epoch_seconds"] for r in out["runs"] if r["arch"] == arch and r["format"] == fmt
            ]
            spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
            print(
                f"{arch} {fmt}: mean test accuracy {100 * statistics.mean(accs):.2f} % "
                f"(sd {100 * spread:.2f}), median {statistics.median(secs):.1f} s/epoch"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
