"""Time and score a recipe against the params.yaml CNN: whole training runs, epoch by epoch.

    python benchmarks/recipe.py                                   # full-size synthetic CIFAR-10
    python benchmarks/recipe.py --train 5000 --test 1000          # a quick, rough comparison
    python benchmarks/recipe.py --recipe recipes/cnn-fast.yaml --device cuda

Both runs use the real training loop (`train_classifier`) with the settings the `train_cnn` stage
would use: params.yaml's `cnn` section, and that section with the recipe applied. Reported per
run: wall-clock seconds per training epoch (median), the process's CPU seconds per epoch (every
thread), the whole run's training and evaluation seconds, FLOPs per training image and the test
accuracy, with the machine's CPU model and flags. On synthetic data the accuracies only show that
both recipes learn; they say nothing about real CIFAR-10.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from appliedtorch.classify.loop import model_args_for, model_name, train_classifier
from appliedtorch.classify.params import CNNParams
from appliedtorch.machine.hardware import cpu_description
from appliedtorch.core.params import read_yaml
from appliedtorch.data.loading import synthetic_in_memory
from appliedtorch.params import parse_params
from appliedtorch.recipes import apply, read_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops  # noqa: E402 - the sibling benchmark script, reused

REPO = Path(__file__).resolve().parents[1]


def run(name: str, config: CNNParams, data: Any, device: str) -> dict[str, Any]:
    """Train `config` on `data`; its epoch times, CPU time, FLOPs and accuracy."""
    cpu = []
    last = [time.process_time()]

    def on_epoch(stats: Any) -> None:
        now = time.process_time()
        cpu.append(now - last[0])  # includes the epoch's evaluation
        last[0] = now
        print(f"  {name} epoch {stats.epoch}: {stats.epoch_seconds:.1f} s, "
              f"test accuracy {stats.test_accuracy:.2%}", flush=True)  # fmt: skip

    result = train_classifier(data, config, device=device, callback=on_epoch)
    epochs = [h.epoch_seconds for h in result.history]
    per_image = flops.train_flops_per_sample(
        model_name(config), model_args_for(config, data), tuple(data.train_images.shape[1:])
    )
    return {
        "net": model_name(config),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "compute_dtype": "bfloat16" if result.bf16 else "float32",
        "epoch_seconds": epochs,
        "median_epoch_seconds": statistics.median(epochs),
        "cpu_seconds_per_epoch": statistics.median(cpu),
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "train_mflop_per_image": per_image / 1e6,
        "test_accuracy": result.evaluation.accuracy,
        "accuracy_per_epoch": [h.test_accuracy for h in result.history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "cnn-fast.yaml")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--train", type=int, default=50_000, help="synthetic training images")
    parser.add_argument("--test", type=int, default=10_000, help="synthetic test images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=REPO / "reports" / "recipe_benchmark.json")
    args = parser.parse_args()

    raw = read_yaml(args.params)
    recipe = read_recipe(args.recipe, args.params)
    configs = {}
    for name, mapping in (("params.yaml", raw), (args.recipe.stem, apply(raw, recipe))):
        configs[name] = parse_params(mapping).cnn
    data = synthetic_in_memory("cifar10", args.train, args.test)
    results = {"machine": {"cpu": cpu_description(), "torch": torch.__version__,
                           "python": platform.python_version(), "threads": torch.get_num_threads(),
                           "device": args.device},
               "data": f"synthetic cifar10, {args.train} train + {args.test} test"}  # fmt: skip
    for name, config in configs.items():
        print(f"{name}: {model_name(config)}, {config.epochs} epochs", flush=True)
        results[name] = run(name, config, data, args.device)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    cpu = results["machine"]["cpu"]
    print(f"\nCPU {cpu['model']}, flags {' '.join(cpu['flags'])}; torch {torch.__version__}")
    print(f"{'run':<14}{'net':<8}{'epochs':>7}{'s/epoch':>9}{'CPU s/epoch':>13}{'train s':>9}"
          f"{'MFLOP/img':>11}{'accuracy':>10}  (synthetic data)")  # fmt: skip
    for name in configs:
        r = results[name]
        print(f"{name:<14}{r['net']:<8}{r['epochs']:>7}{r['median_epoch_seconds']:>9.1f}"
              f"{r['cpu_seconds_per_epoch']:>13.1f}{r['train_seconds']:>9.1f}"
              f"{r['train_mflop_per_image']:>11.1f}{r['test_accuracy']:>10.2%}")  # fmt: skip
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
