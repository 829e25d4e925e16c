"""Score and time a recipe against the params.yaml CNN, and each change of the recipe alone.

    python benchmarks/recipe.py                                   # full-size synthetic CIFAR-10
    python stages/download.py --params params.yaml --dataset fashion-mnist --out /tmp/fmnist
    python benchmarks/recipe.py --dataset fashion-mnist --data /tmp/fmnist --train 10000 \\
        --seeds 3 --variant all -S cnn.bf16=true -S cnn.threads=1

Every run is the real training loop (`train_classifier`) with the settings the `train_cnn` stage
would use: params.yaml's `cnn` section with a variant's changes. The variants are those of
`python -m appliedtorch.recipes compare`: `baseline` (params.yaml as it is), `recipe` (every key)
and each change the recipe makes, alone (`arch`, `optimizer`, ...); `--variant all` runs them
all, `a+b` runs two changes together. `-S key=value` applies to every variant.

Real images: `--dataset NAME` reads the directory `--data` (default data/raw/NAME) with
`load_dataset`; `--train N` trains on its first N training images, always tested on the whole
test set (params' `train_limit` would cut the test set too). The runs go seed by seed, every
variant once per seed, in reversed order every other seed, so that the variants share the
machine's load; set `threads` and `bf16` explicitly (`-S`) so that no variant pays, or differs
by, the `auto` probe. Printed per variant: test accuracy and training seconds (the training
passes, evaluation excluded), mean ± sample sd over seeds; `x baseline`, its training time over
the baseline's run of the same seed (the fair time comparison on a loaded machine); `quiet s`,
its epochs times the fastest epoch seen (an estimate for an unloaded machine); with the CPU's
model and flags and the load average around the runs. On synthetic data the accuracies only show
that every variant learns.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from appliedtorch.classify.params import CNNParams
from appliedtorch.classify.training.loop import model_args_for, net_name, train_classifier
from appliedtorch.core.errors import AppliedTorchError, DivergenceError, ParamsError
from appliedtorch.core.params import read_yaml
from appliedtorch.data.datasets import DATASETS
from appliedtorch.data.loading import ImageData, load_dataset, synthetic_in_memory
from appliedtorch.machine.hardware import cpu_description
from appliedtorch.params import parse_params
from appliedtorch.recipes import apply, parse_sets, read_recipe, variants

# The sibling modules, also where this file is loaded by path (tests/test_recipe_real.py).
sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops
from common import save

REPO = Path(__file__).resolve().parents[1]
SYNTHETIC_SIZES = (50_000, 10_000)  # CIFAR-10's, the default stand-in


def load_data(args: argparse.Namespace) -> ImageData:
    """Real images of `--dataset` (first `--train` training, first `--test` test images), or the
    synthetic CIFAR-10 stand-in."""
    if args.dataset == "synthetic":
        n_train, n_test = args.train or SYNTHETIC_SIZES[0], args.test or SYNTHETIC_SIZES[1]
        return synthetic_in_memory("cifar10", n_train, n_test)
    data = load_dataset(args.dataset, args.data or REPO / "data" / "raw" / args.dataset)
    return dataclasses.replace(
        data,
        train_images=data.train_images[: args.train],
        train_labels=data.train_labels[: args.train],
        test_images=data.test_images[: args.test],
        test_labels=data.test_labels[: args.test],
    )


def configs(args: argparse.Namespace, dataset: str) -> dict[str, CNNParams]:
    """{variant: its cnn section}, in the order asked for; every one is checked before any trains."""
    raw = read_yaml(args.params)
    recipe = read_recipe(args.recipe, args.params)
    table = variants(recipe, raw)
    names = list(table) if args.variant == "all" else args.variant.split(",")
    overrides = parse_sets(args.extra)
    overrides.setdefault("cnn.dataset", dataset)
    out = {}
    for name in names:
        unknown = [part for part in name.split("+") if part not in table]
        if unknown:
            known = ", ".join(table)
            raise ParamsError(f"--variant: no variant {', '.join(unknown)} (known: {known})")
        changes = {k: v for part in name.split("+") for k, v in table[part].items()}
        out[name] = parse_params(apply(raw, {**changes, **overrides}), f"variant {name}").cnn
    return out


def run(config: CNNParams, data: ImageData, seed: int, device: str) -> dict[str, Any]:
    """Train `config` on `data` with `seed`: accuracy, seconds and the load around the run."""
    load = os.getloadavg()[0]
    try:
        result = train_classifier(data, config, seed=seed, device=device)
    except DivergenceError as exc:
        return {"seed": seed, "diverged": str(exc), "load": [load, os.getloadavg()[0]]}
    return {
        "seed": seed,
        "test_accuracy": result.evaluation.accuracy,
        "train_seconds": result.train_seconds,
        "eval_seconds": result.eval_seconds,
        "epoch_seconds": [h.epoch_seconds for h in result.history],
        "accuracy_per_epoch": [h.test_accuracy for h in result.history],
        "compute_dtype": "bfloat16" if result.bf16 else "float32",
        "load": [load, os.getloadavg()[0]],
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN for none)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(
    config: CNNParams,
    data: ImageData,
    runs: list[dict[str, Any]],
    baseline: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One variant: its net, schedule, FLOPs and the mean ± sd of its runs; with the baseline's
    runs, the mean ± sd of its training time over the baseline's, seed by seed (run next to
    each other, so under about the same load)."""
    done = [r for r in runs if "diverged" not in r]
    pairs = zip(runs, baseline or [], strict=False)  # no baseline: no ratio
    ratio, ratio_sd = mean_sd(
        [r["train_seconds"] / b["train_seconds"] for r, b in pairs if "diverged" not in r | b]
    )
    acc, acc_sd = mean_sd([r["test_accuracy"] for r in done])
    train, train_sd = mean_sd([r["train_seconds"] for r in done])
    evals, evals_sd = mean_sd([r["eval_seconds"] for r in done])
    per_image = flops.train_flops_per_sample(
        net_name(config), model_args_for(config, data), tuple(data.train_images.shape[1:])
    )
    return {
        "net": net_name(config),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "train_images": len(data.train_images),
        "test_images": len(data.test_images),
        "train_mflop_per_image": per_image / 1e6,
        "test_accuracy": acc,
        "test_accuracy_sd": acc_sd,
        "train_seconds": train,
        "train_seconds_sd": train_sd,
        "eval_seconds": evals,
        "eval_seconds_sd": evals_sd,
        # The least-loaded pace seen, times the epochs: what a quiet machine would take.
        "fastest_epoch_seconds": min((x for r in done for x in r["epoch_seconds"]), default=None),
        "train_seconds_vs_baseline": ratio,
        "train_seconds_vs_baseline_sd": ratio_sd,
        "diverged": len(runs) - len(done),
        "runs": runs,
    }


def print_table(results: dict[str, Any]) -> None:
    """The machine, the data and one line per variant."""
    cpu = results["machine"]["cpu"]
    loads = [x for v in results["variants"].values() for r in v["runs"] for x in r["load"]]
    print(
        f"\nCPU {cpu['model']} ({cpu['cores']} cores), flags {' '.join(cpu['flags'])}; "
        f"torch {torch.__version__}; load average (1 min) {min(loads):.1f}-{max(loads):.1f}"
    )
    print(f"data: {results['data']}; seeds {results['seeds']}")
    print(
        f"{'variant':<28}{'net':<7}{'epochs':>6}{'batch':>6}{'images':>7}{'MFLOP':>7}"
        f"{'accuracy %':>16}{'train s':>15}{'x baseline':>14}{'quiet s':>9}{'eval s':>9}"
    )
    for name, v in results["variants"].items():
        accuracy = f"{100 * v['test_accuracy']:.2f} ± {100 * v['test_accuracy_sd']:.2f}"
        train = f"{v['train_seconds']:.1f} ± {v['train_seconds_sd']:.1f}"
        ratio = f"{v['train_seconds_vs_baseline']:.2f} ± {v['train_seconds_vs_baseline_sd']:.2f}"
        fastest = v["fastest_epoch_seconds"]
        quiet = f"{fastest * v['epochs']:.1f}" if fastest is not None else "-"
        note = f"  ({v['diverged']} diverged)" if v["diverged"] else ""
        print(
            f"{name:<28}{v['net']:<7}{v['epochs']:>6}{v['batch_size']:>6}"
            f"{v['train_images']:>7}{v['train_mflop_per_image']:>7.1f}{accuracy:>16}{train:>15}"
            f"{ratio:>14}{quiet:>9}{v['eval_seconds']:>9.1f}{note}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "cnn-fast.yaml")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument(
        "--dataset",
        choices=("synthetic", *DATASETS),
        default="synthetic",
        help="real images of this dataset (default: synthetic CIFAR-10)",
    )
    parser.add_argument("--data", type=Path, help="its directory (default data/raw/DATASET)")
    parser.add_argument("--train", type=int, help="first N training images (default: all)")
    parser.add_argument("--test", type=int, help="first N test images (default: all)")
    parser.add_argument("--seeds", type=int, default=1, help="runs per variant (seed, seed+1, ...)")
    parser.add_argument(
        "--variant",
        default="baseline,recipe",
        help="comma-separated variants, a+b for two changes together, or all",
    )
    parser.add_argument(
        "-S",
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="key=value applied to every variant (e.g. cnn.threads=1)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/recipe.json")
    args = parser.parse_args(argv)
    for name in ("train", "test", "seeds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load_data(args)
    dataset = "cifar10" if args.dataset == "synthetic" else args.dataset
    table = configs(args, dataset)
    seed = parse_params(read_yaml(args.params)).seed
    seeds = [seed + i for i in range(args.seeds)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in table}
    for i, s in enumerate(seeds):  # seed-major, alternating: every variant under the same load
        for name in list(table)[:: -1 if i % 2 else 1]:
            start = time.perf_counter()
            r = run(table[name], data, s, args.device)
            runs[name].append(r)
            what = r.get("diverged") or (
                f"accuracy {r['test_accuracy']:.2%}, training {r['train_seconds']:.1f} s"
            )
            print(
                f"seed {s} {name}: {what} ({time.perf_counter() - start:.0f} s in all, "
                f"load {r['load'][0]:.1f})",
                flush=True,
            )
    source = "synthetic" if data.synthetic else f"real ({data.source})"
    results = {
        "machine": {
            "cpu": cpu_description(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": args.device,
        },
        "data": f"{source} {data.name}: first {len(data.train_images)} training images, "
        f"{len(data.test_images)} test images",
        "seeds": seeds,
        "variants": {
            name: summary(table[name], data, runs[name], runs.get("baseline")) for name in table
        },
    }
    print_table(results)
    save("recipe", results, args.json)


if __name__ == "__main__":
    try:
        main()
    except AppliedTorchError as exc:  # a bad recipe, -S value or data directory: one line
        sys.exit(f"error: {exc}")
