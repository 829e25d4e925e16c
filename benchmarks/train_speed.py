"""Time one training epoch: the tutorial's loop against the project's with variants, one process.

    python benchmarks/train_speed.py                 # full-size synthetic MNIST and CIFAR-10
    python benchmarks/train_speed.py --small         # 1/10 of the data: a quick, rough ratio
    python benchmarks/train_speed.py --model cnn --batches 40 \
        --variant channels_last=false --variant bf16=true --variant threads=1

Both loops (loops.py) start from the same seed in this process; each is timed for the training
pass alone, then evaluated on the same test set with the same code. Each `--variant` times the
project's loop again with those overrides of params.yaml's section: the quick way to try a
setting (`epochs.py` is the measurement the docs quote: the tutorial in a process of its own,
best of alternated repetitions). With `--batches N` both loops stop after N batches and the
epoch time is extrapolated from them. Writes reports/benchmarks/train_speed.json.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
import math
import platform
from pathlib import Path
from typing import Any

import torch

import loops
from appliedtorch.classify.params import ClassifierParams
from appliedtorch.data.loading import ImageData
from appliedtorch.params import load_params
from common import REPO, save


def parse_variant(text: str) -> dict[str, Any]:
    """'bf16=true,threads=1' -> {'bf16': True, 'threads': 1}."""
    out: dict[str, Any] = {}
    for part in filter(None, text.split(",")):
        key, _, raw = part.partition("=")
        value: Any = {"true": True, "false": False, "null": None}.get(raw.lower(), raw)
        if isinstance(value, str):
            value = int(raw) if raw.lstrip("-").isdigit() else float(raw)
        out[key.strip()] = value
    return out


def time_tutorial(
    data: ImageData, base: ClassifierParams, args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """The tutorial's epoch on `--tutorial-threads` (default torch's), extrapolated; printed."""
    steps = math.ceil(len(data.train_images) / base.batch_size)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.tutorial_threads or default_threads)
    model, seconds, done = loops.tutorial_epoch(data, base, args.batches, seed=seed)
    torch.set_num_threads(default_threads)
    epoch, acc = seconds / done * steps, loops.accuracy(model, data)
    label = f"tutorial loop, {args.tutorial_threads or default_threads} threads"
    print(f"  {label:<46} epoch {epoch:7.2f} s   test acc {100 * acc:6.2f}%")
    return {"batches_timed": done, "tutorial_epoch_seconds": epoch, "tutorial_accuracy": acc}


def time_variant(
    section: str, data: ImageData, base: ClassifierParams, text: str, tutorial: float, args, seed
) -> dict[str, Any]:
    """The project's epoch with the overrides `text` ('' for params.yaml's); printed."""
    steps = math.ceil(len(data.train_images) / base.batch_size)
    config = base.model_copy(update=parse_variant(text))
    seconds, acc, done, bf16 = loops.project_epoch(data, config, args.batches, seed=seed)
    epoch = seconds / done * steps
    name = text or f"params.yaml (threads={base.threads or torch.get_num_threads()})"
    name += f", {'bf16' if bf16 else 'fp32'}"
    ratio, target = tutorial / epoch, loops.TARGETS[section]
    print(
        f"  {'project, ' + name:<46} epoch {epoch:7.2f} s   test acc {100 * acc:6.2f}%   "
        f"{ratio:5.1f}x faster ({'meets' if ratio >= target else 'misses'} the {target:g}x target)"
    )
    return {"variant": name, "epoch_seconds": epoch, "accuracy": acc, "speedup": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn", "both"], default="both")
    parser.add_argument("--small", action="store_true", help="1/10 of the full-size data")
    parser.add_argument("--batches", type=int, help="time only the first N batches, extrapolate")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--variant", action="append", default=[], help="e.g. bf16=true,threads=1")
    parser.add_argument("--tutorial-threads", type=int, help="default: torch's, as the tutorial")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/train_speed.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    p = load_params(args.params)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {platform.processor() or ''}"
    )
    results = []
    for section in ["mlp", "cnn"] if args.model == "both" else [args.model]:
        data = loops.load_synthetic(loops.DATASET[section], 0.1 if args.small else 1.0)
        base = loops.timed_section(p, section)
        print(
            f"\n{section.upper()} on synthetic {data.name}: {len(data.train_images)} train / "
            f"{len(data.test_images)} test images, batch {base.batch_size}"
        )
        row = {"section": section, "train_samples": len(data.train_images)}
        row |= time_tutorial(data, base, args, p.seed)
        tutorial = row["tutorial_epoch_seconds"]
        row["project"] = [
            time_variant(section, data, base, text, tutorial, args, p.seed)
            for text in ["", *args.variant]
        ]
        results.append(row)
    save("train_speed", {"results": results}, args.json)


if __name__ == "__main__":
    main()
