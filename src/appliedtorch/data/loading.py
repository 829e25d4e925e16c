"""Datasets on disk and in memory: checking data/raw/<name> and loading it into uint8 tensors.

The download stage (`appliedtorch.data.download.fetch`) puts one dataset into `data/raw/<name>/` in
torchvision's on-disk layout (extracted, so loading is fast), plus `source.json` saying where it
came from:

    data/raw/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    data/raw/fashion-mnist/FashionMNIST/raw/  (the same four files)
    data/raw/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta,readme.html}

    >>> data = load_dataset("mnist", "data/raw/mnist")     # uint8 tensors, classes, source
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import appliedtorch.data.synthetic as synthetic
from appliedtorch.core.errors import DataError
from appliedtorch.core.utils import file_md5
from appliedtorch.data.datasets import dataset
from appliedtorch.data.formats import read_dataset
from appliedtorch.data.limits import brief, redo

log = logging.getLogger(__name__)

SOURCE_FILE = "source.json"
MD5SUMS = "MD5SUMS"


@dataclass(frozen=True)
class ImageData:
    """A whole dataset in memory: uint8 images (N, C, H, W), int64 labels, class names, source."""

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    source: str  # upstream | synthetic | the mirror; results say so (MLflow tag data.source)
    # {path relative to the dataset directory: md5} of the files checked on loading, so the
    # run's DVC hash (tracking.data_tags) need not read them a second time
    file_md5: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def synthetic(self) -> bool:
        """True when the images are generated stand-ins, not the real dataset."""
        return self.source == "synthetic"


# ---- loading -----------------------------------------------------------------------------------


def load_dataset(name: str, root: str | os.PathLike) -> ImageData:
    """Read a downloaded dataset (`data/raw/<name>`) into memory; DataError if missing or corrupt."""
    ds = dataset(name)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset {name} not found; {redo(name)}")
    record = _read_record(root, name)
    if record.get("used") is False:  # the download stage's marker: no section named it then
        raise DataError(
            f"{root}: {name} was not downloaded, as no classifier named it; "
            f"`dvc exp run -S mlp.dataset={name}` (or cnn.dataset) downloads it and trains on it"
        )
    if record.get("dataset", name) != name:
        raise DataError(
            f"{root} holds {record['dataset']}, not {name}; pass the {name} directory "
            f"(data/raw/{name}) or {redo(name)}"
        )
    verified = check_files(root, record, name)
    try:
        arrays = read_dataset(ds, root)
        counts = {s: len(arrays[f"{s}_labels"]) for s in ("train", "test")}
        for split, n in counts.items():
            if record.get(split, n) != n:
                raise DataError(f"{root}: {n} {split} images, {SOURCE_FILE} says {record[split]}")
    except DataError as exc:
        raise DataError(f"{exc}; {redo(name)}") from None
    return ImageData(name=name, **arrays, source=record.get("source", "unknown"), file_md5=verified)


def check_files(root: Path, record: dict[str, Any], name: str) -> dict[str, str]:
    """Every file `source.json` lists is there with its size and md5 (DataError otherwise);
    returns {relative path: md5} of the files checked.

    A stage script run by hand (not by `dvc repro`) gets no content check from DVC, and a
    same-size corruption passes a size check. md5 of the full datasets costs ~0.1-0.4 s
    (see the closing note of issue 11), small beside loading and training.
    """
    files = record.get("files", {})
    for rel, info in files.items():  # sizes first: cheap, and they catch truncation quickly
        path = root / rel
        if not isinstance(info, dict) or not isinstance(info.get("bytes"), int):
            raise DataError(
                f"{root / SOURCE_FILE} is malformed at '{brief(rel, 60)}'; {redo(name)}"
            )
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise DataError(f"{root / SOURCE_FILE} names a file outside {root}; {redo(name)}")
        if not path.is_file():
            raise DataError(f"{path} is missing; {redo(name)}")
        if path.stat().st_size != info["bytes"]:
            raise DataError(
                f"{path} has {path.stat().st_size} bytes, {info['bytes']} expected "
                f"(truncated or modified); {redo(name)}"
            )
    verified = {}
    for rel, info in files.items():
        path = root / rel
        if "md5" not in info:
            continue
        verified[rel] = file_md5(path)
        if verified[rel] != info["md5"]:
            raise DataError(
                f"{path} does not match its md5 in {SOURCE_FILE} (modified or corrupt); "
                f"{redo(name)}"
            )
    return verified


def _read_record(root: Path, name: str) -> dict[str, Any]:
    path = root / SOURCE_FILE
    if not path.exists():
        return {}  # e.g. a directory torchvision downloaded itself: load it, source unknown
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("files", {}), dict):
            raise ValueError("not a mapping with 'files'")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); {redo(name)}") from None
    return record


def synthetic_in_memory(name: str, n_train: int, n_test: int, seed: int = 0) -> ImageData:
    """Synthetic data generated in memory, shaped as `load_dataset` returns it (tests, benchmarks)."""
    x_train, y_train = synthetic.generate(name, n_train, seed=seed, split="train")
    x_test, y_test = synthetic.generate(name, n_test, seed=seed, split="test")
    return ImageData(
        name=name,
        train_images=torch.from_numpy(x_train),
        train_labels=torch.from_numpy(y_train),
        test_images=torch.from_numpy(x_test),
        test_labels=torch.from_numpy(y_test),
        classes=list(dataset(name).classes),
        source="synthetic",
    )
