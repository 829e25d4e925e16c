"""Time one training epoch: the tutorial's loop against the project's, on the same data, in one run.

    python benchmarks/train_speed.py                 # full-size synthetic MNIST and CIFAR-10
    python benchmarks/train_speed.py --small         # 1/10 of the data: a quick, rough ratio
    python benchmarks/train_speed.py --model cnn --batches 40 \
        --variant channels_last=false --variant bf16=true --variant threads=1

The tutorial's loop is what its sections 10-12 do: a Dataset that hands each sample to PIL and
torchvision transforms (ToTensor, Normalize; for CIFAR-10 RandomCrop(32, padding=4) and
RandomHorizontalFlip first) through a DataLoader (batch 64 / 128, shuffle, no worker processes),
and plain Adam. The project's loop is `appliedtorch.classify.training.loop.train_classifier` with the
params.yaml settings (and each `--variant` override). Both start from the same seed; each is
timed for the training pass alone, then evaluated on the same test set with the same code.
With `--batches N` both loops stop after N batches and the epoch time is extrapolated from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.params import ClassifierParams
from appliedtorch.classify.training.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.training.loop import evaluate, model_args_for, train_classifier
from appliedtorch.data.loading import ImageData, synthetic_in_memory
from appliedtorch.params import Params, load_params

SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000)}
DATASET = {"mlp": "mnist", "cnn": "cifar10"}
TARGETS = {"mlp": 8.0, "cnn": 1.9}  # speed-up over the tutorial's loop to aim for


class TutorialDataset(Dataset):
    """What torchvision.datasets.MNIST / CIFAR10 do per sample: array -> PIL image -> transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any):
        # torchvision keeps MNIST as (N, 28, 28) and CIFAR-10 as (N, 32, 32, 3) uint8 arrays.
        self.images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1).copy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        mode = "L" if self.images.ndim == 3 else "RGB"
        img = Image.fromarray(self.images[i], mode=mode)
        return self.transform(img), self.labels[i]


def timed_section(p: Params, arch: str) -> ClassifierParams:
    """`arch`'s section as the benchmarks time it: one epoch over the whole training set. `bf16`
    and `threads` stay as params.yaml has them: `auto` is decided in `train_classifier` by the
    probe, as in the stage (its cached choice after the first run), not by the CPU's flags."""
    section = getattr(p, arch)
    return section.model_copy(update={"epochs": 1, "train_limit": None})


def tutorial_epoch(
    arch: str,
    data: ImageData,
    config: ClassifierParams,
    batches: int | None,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[torch.nn.Module, float, int]:
    """The tutorial's training loop for one epoch; returns (model, seconds, batches run).

    On a GPU (`device`) it does what the tutorial does there: the DataLoader's batches are
    made on the CPU and moved with `.to(device)`, one batch at a time.
    """
    dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    mean, std = NORMALIZATION[data.name]
    steps = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if config.augment:
        steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), *steps]
    dataset = TutorialDataset(
        data.train_images.numpy(), data.train_labels.numpy(), transforms.Compose(steps)
    )
    torch.manual_seed(seed)
    model = build_model(arch, **model_args_for(config, data)).to(dev)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    running_loss, done = 0.0, 0
    start = time.perf_counter()
    for images, labels in loader:
        images, labels = images.to(dev), labels.to(dev)
        outputs = model(images)
        loss = F.cross_entropy(outputs, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        done += 1
        if batches is not None and done >= batches:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return model.eval().cpu(), time.perf_counter() - start, done


def project_epoch(
    data: ImageData,
    config: ClassifierParams,
    batches: int | None,
    device: str = "cpu",
    seed: int = 0,
) -> tuple[float, float, int, bool]:
    """The project's loop for one epoch (or its first `batches` batches); (seconds, accuracy,
    batches, whether it trained in bf16: `auto` resolved)."""
    if batches is not None:
        limit = min(batches * config.batch_size, len(data.train_images))
        data = replace(
            data, train_images=data.train_images[:limit], train_labels=data.train_labels[:limit]
        )
    # train_limit would cut the test set too; the slice above cuts only the training set.
    one_epoch = config.model_copy(update={"epochs": 1, "train_limit": None})
    result = train_classifier(data, one_epoch, seed=seed, device=device)
    done = math.ceil(len(data.train_images) / config.batch_size)
    return result.train_seconds, result.evaluation.accuracy, done, result.bf16


def accuracy(model: torch.nn.Module, data: ImageData) -> float:
    """Test accuracy of the tutorial's model with the project's evaluation (fp32, large batches)."""
    mean, std = NORMALIZATION[data.name]
    test = Batches(data.test_images, data.test_labels, 1024, Normalizer(mean, std))
    return evaluate(model, test).accuracy


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


def load_synthetic(name: str, scale: float) -> ImageData:
    """Synthetic data of the upstream size (times `scale`), generated in memory."""
    n_train, n_test = (max(1, int(n * scale)) for n in SIZES[name])
    return synthetic_in_memory(name, n_train, n_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "cnn", "both"], default="both")
    parser.add_argument("--small", action="store_true", help="1/10 of the full-size data")
    parser.add_argument("--batches", type=int, help="time only the first N batches, extrapolate")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also time the project's loop with these overrides, e.g. bf16=true,threads=1",
    )
    parser.add_argument(
        "--tutorial-threads",
        type=int,
        help="CPU threads for the tutorial's loop (default: torch's default, as the tutorial runs)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    p = load_params(args.params)
    archs = ["mlp", "cnn"] if args.model == "both" else [args.model]
    scale = 0.1 if args.small else 1.0
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {platform.processor() or ''}"
    )
    results = []
    for arch in archs:
        data = load_synthetic(DATASET[arch], scale)
        base = timed_section(p, arch)
        steps_per_epoch = math.ceil(len(data.train_images) / base.batch_size)
        print(
            f"\n{arch.upper()} on synthetic {data.name}: {len(data.train_images)} train / "
            f"{len(data.test_images)} test images, batch {base.batch_size}, "
            f"{steps_per_epoch} batches per epoch"
            + (f"; timing {args.batches} batches, extrapolated" if args.batches else "")
        )
        default_threads = torch.get_num_threads()
        torch.set_num_threads(args.tutorial_threads or default_threads)
        model, seconds, done = tutorial_epoch(arch, data, base, args.batches, seed=p.seed)
        torch.set_num_threads(default_threads)
        tut_epoch = seconds / done * steps_per_epoch
        tut_acc = accuracy(model, data)
        label = f"tutorial loop, {args.tutorial_threads or default_threads} threads"
        print(f"  {label:<46} epoch {tut_epoch:7.2f} s   test acc {100 * tut_acc:6.2f}%")
        row = {
            "arch": arch,
            "train_samples": len(data.train_images),
            "batches_timed": done,
            "tutorial_epoch_seconds": tut_epoch,
            "tutorial_accuracy": tut_acc,
            "project": [],
        }
        for text in ["", *args.variant]:
            overrides = parse_variant(text)
            config = base.model_copy(update=overrides)
            seconds, acc, done, bf16 = project_epoch(data, config, args.batches, seed=p.seed)
            epoch = seconds / done * steps_per_epoch
            name = text or f"params.yaml (threads={base.threads or default_threads})"
            name += f", {'bf16' if bf16 else 'fp32'}"
            ratio = tut_epoch / epoch
            flag = "meets" if ratio >= TARGETS[arch] else "misses"
            print(
                f"  {'project, ' + name:<46} epoch {epoch:7.2f} s   test acc {100 * acc:6.2f}%   "
                f"{ratio:5.1f}x faster ({flag} the {TARGETS[arch]:g}x target)"
            )
            row["project"].append(
                {"variant": name, "epoch_seconds": epoch, "accuracy": acc, "speedup": ratio}
            )
        results.append(row)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
