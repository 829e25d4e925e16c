"""What `auto` chooses on this machine, checked against whole batches, and denormals on vs off.

    python benchmarks/auto.py                       # both nets, full-size synthetic data
    python benchmarks/auto.py --only probe,check --arch cnn --batches 40
    python benchmarks/auto.py --only denormal --epochs 4 --reps 2
    python benchmarks/auto.py --only denormal --mnist-dir /usr/share/datasets/fashion-mnist

Three measurements, each with the load average before and after (the machine may be shared):

- **probe**: `classify.training.tuning.tune` with `bf16: auto` (bf16 a candidate where native) and
  `threads: auto` on the default params' net, a real batch and the CPU, uncached: the choice,
  each candidate's seconds per step and the probe's own cost.
- **check**: the same candidates timed over `--batches` whole training batches each, alternated,
  best of `--reps`: is the probe's choice within 10 % of the fastest?
- **denormal**: MLP epochs on MNIST-shaped data with `hardware.flush_denormals` on and off,
  alternated run by run, best of `--reps` per epoch: epochs 2+ are where denormals appear.

The nets, batch sizes and learning rates are params.yaml's defaults (tutorial MLP 784-128-128-10,
batch 64; tutorial CNN, batch 128, channels_last); the optimizer is fused Adam, as the loop's.
Writes reports/benchmarks/auto.json.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import gzip
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.training.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.training.steps import training_step
from appliedtorch.classify.training.tuning import first_batch, tune
from appliedtorch.core.utils import thread_count
from appliedtorch.data.loading import ImageData
from appliedtorch.machine.hardware import cpu_description, flush_denormals
from common import save
from loops import DATASET, load_synthetic


@dataclass
class Net:
    """A default net with its data: what the stage would train."""

    arch: str
    data: ImageData
    batch_size: int
    lr: float
    channels_last: bool
    model_args: dict[str, Any]

    def model(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        model = build_model(self.arch, **self.model_args)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.lr, fused=True)

    def batches(self, seed: int = 0, limit: int | None = None) -> Batches:
        mean, std = NORMALIZATION[self.data.name]
        normalize = Normalizer(mean, std, "cpu", self.channels_last)
        shuffle = torch.Generator().manual_seed(seed)
        images, labels = self.data.train_images[:limit], self.data.train_labels[:limit]
        return Batches(images, labels, self.batch_size, normalize, shuffle=shuffle)


def default_net(arch: str, scale: float, data: ImageData | None = None) -> Net:
    """params.yaml's default MLP or CNN on full-size (times `scale`) synthetic data."""
    if data is None:
        data = load_synthetic(DATASET[arch], scale)
    if arch == "mlp":
        args = {"in_features": 784, "hidden_size": 128, "num_classes": 10}
        return Net("mlp", data, 64, 1e-3, False, args)
    args = {"in_channels": 3, "num_classes": 10, "dropout": 0.5, "image_size": 32}
    return Net("cnn", data, 128, 1e-3, True, args)


def load_idx_mnist(folder: Path) -> ImageData:
    """MNIST-format IDX .gz files (e.g. Debian's dataset-fashion-mnist) as ImageData."""

    def read(name: str, offset: int) -> np.ndarray:
        with gzip.open(folder / name, "rb") as f:
            return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)

    def images(name: str) -> torch.Tensor:
        return torch.from_numpy(read(name, 16).reshape(-1, 1, 28, 28).copy())

    def labels(name: str) -> torch.Tensor:
        return torch.from_numpy(read(name, 8).astype(np.int64))

    return ImageData(
        name="mnist",  # same shape and normalisation
        train_images=images("train-images-idx3-ubyte.gz"),
        train_labels=labels("train-labels-idx1-ubyte.gz"),
        test_images=images("t10k-images-idx3-ubyte.gz"),
        test_labels=labels("t10k-labels-idx1-ubyte.gz"),
        classes=[str(i) for i in range(10)],
        source=str(folder),
    )


def loaded(run: Callable[[], Any]) -> dict[str, Any]:
    """Run `run` with the 1-minute load average before and after."""
    before = os.getloadavg()[0]
    result = run()
    return {"result": result, "load_before": before, "load_after": os.getloadavg()[0]}


# --------------------------------------------------------------------------------------------


def probe(net: Net) -> dict[str, Any]:
    """What `bf16: auto, threads: auto` chooses for `net` now (uncached)."""
    model = net.model()
    batch = first_batch(net.batches())
    tuning = tune(
        model,
        net.optimizer,
        batch,
        torch.device("cpu"),
        bf16="auto",
        threads="auto",
        use_cache=False,
        time_under_load=True,  # a measurement: it reports the load it met, never skips
    )
    assert tuning.probe is not None
    return {
        "bf16": tuning.bf16,
        "threads": tuning.threads,
        "choice": tuning.probe.choice,
        "step_seconds": tuning.probe.seconds,
        "probe_seconds": tuning.probe.probe_seconds,
    }


def check(net: Net, batches: int, reps: int) -> dict[str, Any]:
    """Each bf16 x threads candidate over `batches` whole batches, alternated; best of reps."""
    candidates = [(b, t) for b in (False, True) for t in sorted({1, torch.get_num_threads()})]
    runs: dict[str, list[float]] = {}
    data = net.batches(limit=batches * net.batch_size)
    for rep in range(reps + 1):  # rep 0 warms every candidate up (oneDNN kernels), untimed
        order = candidates if rep % 2 else candidates[::-1]
        for bf16, threads in order:
            model = net.model()
            optimizer = net.optimizer(model)
            with thread_count(threads):
                step = training_step(model, optimizer, bf16=bf16)
                start = time.perf_counter()
                for batch in data:
                    step(*batch)
                seconds = (time.perf_counter() - start) / len(data)
            if rep:
                name = f"{'bfloat16' if bf16 else 'float32'} {threads} threads"
                runs.setdefault(name, []).append(seconds)
    return {"batches": len(data), "best": {k: min(v) for k, v in runs.items()}, "runs": runs}


def epoch_times(net: Net, epochs: int, flush: bool, threads: int) -> list[float]:
    """Seconds of each of `epochs` training epochs (fresh model, same seed)."""
    model = net.model()
    optimizer = net.optimizer(model)
    train = net.batches()
    step = training_step(model, optimizer)
    times = []
    with thread_count(threads), flush_denormals("cpu", enabled=flush):
        for _ in range(epochs):
            start = time.perf_counter()
            for batch in train:
                step(*batch)
            times.append(time.perf_counter() - start)
    return times


def denormal(net: Net, epochs: int, reps: int, threads: int) -> dict[str, Any]:
    """MLP epoch seconds with flushing on and off, alternated; best of reps for each epoch."""
    runs: dict[str, list[list[float]]] = {"off": [], "on": []}
    for rep in range(reps):
        for mode in ("off", "on") if rep % 2 == 0 else ("on", "off"):
            runs[mode].append(epoch_times(net, epochs, mode == "on", threads))
    best = {m: [min(r[e] for r in runs[m]) for e in range(epochs)] for m in runs}
    later = {m: statistics.mean(best[m][1:]) for m in best} if epochs > 1 else {}
    return {"threads": threads, "runs": runs, "best_per_epoch": best, "best_epochs_2plus": later}


def choices(scale: float) -> dict[str, Any]:
    """What `bf16: auto, threads: auto` chooses for each default net here, printed as it goes."""
    out = {}
    for arch in ("mlp", "cnn"):
        r = probe(default_net(arch, scale))
        steps = ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in r["step_seconds"].items())
        print(
            f"auto for {arch}: {r['choice']} (per step: {steps}; probe {r['probe_seconds']:.2f} s)",
            flush=True,
        )
        out[arch] = r
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="probe,check,denormal")
    parser.add_argument("--arch", default="mlp,cnn")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full data")
    parser.add_argument("--batches", type=int, default=40, help="batches per candidate (check)")
    parser.add_argument("--epochs", type=int, default=4, help="MLP epochs (denormal)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads (denormal)")
    parser.add_argument("--mnist-dir", type=Path, help="IDX .gz files for the denormal run")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/auto.json")
    args = parser.parse_args()
    only, archs = set(args.only.split(",")), args.arch.split(",")
    cpu = cpu_description()
    print(
        f"CPU {cpu['model']} ({cpu['vendor']} family {cpu['family']}), {cpu['cores']} cores, "
        f"flags {' '.join(cpu['flags'])}; torch {torch.__version__}"
    )
    out: dict[str, Any] = {
        "cpu": cpu,
        "torch": torch.__version__,
        "args": vars(args) | {"json": str(args.json), "mnist_dir": str(args.mnist_dir)},
    }
    for arch in archs:
        net = default_net(arch, args.scale)
        if "probe" in only:
            out[f"{arch}_probe"] = r = loaded(lambda net=net: probe(net))
            print(f"{arch} probe: {json.dumps(r)}", flush=True)
        if "check" in only:
            out[f"{arch}_check"] = r = loaded(lambda net=net: check(net, args.batches, args.reps))
            print(
                f"{arch} check: {json.dumps(r['result']['best'])} load {r['load_before']:.2f}"
                f" -> {r['load_after']:.2f}",
                flush=True,
            )
    if "denormal" in only:
        data = load_idx_mnist(args.mnist_dir) if args.mnist_dir else None
        net = default_net("mlp", args.scale, data)
        r = loaded(lambda: denormal(net, args.epochs, args.reps, args.threads))
        out["denormal"] = r
        print(
            f"denormal ({net.data.source}): {json.dumps(r['result']['best_per_epoch'])} load "
            f"{r['load_before']:.2f} -> {r['load_after']:.2f}",
            flush=True,
        )
    save("auto", out, args.json)


if __name__ == "__main__":
    main()
