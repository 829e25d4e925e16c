"""The two training loops the benchmarks compare, on the same synthetic data.

    from loops import load_synthetic, project_epoch, timed_section, tutorial_epoch

The tutorial's loop is what its sections 10-12 do: a Dataset that hands each sample to PIL and
torchvision transforms (ToTensor, Normalize; for CIFAR-10 RandomCrop(32, padding=4) and
RandomHorizontalFlip first) through a DataLoader (batch 64 / 128, shuffle, no worker processes),
and plain Adam. The project's loop is `appliedtorch.classify.training.loop.train_classifier` with
the params.yaml section. Both start from the same seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
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
from appliedtorch.classify.training.loop import (
    evaluate,
    model_args_for,
    net_name,
    train_classifier,
)
from appliedtorch.data.loading import ImageData, synthetic_in_memory
from appliedtorch.params import Params

SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000)}
DATASET = {"mlp": "mnist", "cnn": "cifar10"}
TARGETS = {"mlp": 8.0, "cnn": 1.9}  # speed-up over the tutorial's loop to aim for (an epoch)


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


def timed_section(p: Params, section: str) -> ClassifierParams:
    """The `section` (mlp | cnn) as the benchmarks time it: one epoch over the whole training
    set. `bf16` and `threads` stay as params.yaml has them: `auto` is decided in
    `train_classifier` by the probe, as in the stage (its cached choice after the first run)."""
    return getattr(p, section).model_copy(update={"epochs": 1, "train_limit": None})


def tutorial_epoch(
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
    model = build_model(net_name(config), **model_args_for(config, data)).to(dev)
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


def load_synthetic(name: str, scale: float) -> ImageData:
    """Synthetic data of the upstream size (times `scale`), generated in memory."""
    n_train, n_test = (max(1, int(n * scale)) for n in SIZES[name])
    return synthetic_in_memory(name, n_train, n_test)


def with_test_subset(data: ImageData, n: int) -> ImageData:
    """The same data with only the first n test images (evaluation cost out of training timings)."""
    return replace(data, test_images=data.test_images[:n], test_labels=data.test_labels[:n])
