"""Datasets on disk and in memory: the upstream files and sums, and loading into uint8 tensors.

The download stage (`appliedtorch.data.fetch`) puts one dataset into `data/raw/<name>/` in
torchvision's on-disk layout (extracted, so loading is fast), plus `source.json` saying where it
came from:

    data/raw/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    data/raw/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta,readme.html}

    >>> data = load_dataset("mnist", "data/raw/mnist")     # uint8 tensors, classes, source
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR10, MNIST

from appliedtorch.core.errors import DataError
from appliedtorch.data import synthetic

log = logging.getLogger(__name__)

DATASETS = ("mnist", "cifar10")
SOURCE_FILE = "source.json"
MD5SUMS = "MD5SUMS"
DEFAULT_SIZES = {"mnist": (60000, 10000), "cifar10": (50000, 10000)}  # (train, test)
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


@dataclass(frozen=True)
class Upstream:
    """Where torchvision fetches a dataset: base URLs tried in order, and (file name, md5) pairs."""

    bases: list[str]
    files: list[tuple[str, str]]


# Taken from torchvision itself, so these stay the files and sums torchvision uses.
UPSTREAM = {
    "mnist": Upstream(bases=list(MNIST.mirrors), files=[tuple(r) for r in MNIST.resources]),
    "cifar10": Upstream(
        bases=[CIFAR10.url.rsplit("/", 1)[0] + "/"], files=[(CIFAR10.filename, CIFAR10.tgz_md5)]
    ),
}


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

    @property
    def synthetic(self) -> bool:
        """True when the images are generated stand-ins, not the real dataset."""
        return self.source == "synthetic"


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}' (choose {' or '.join(DATASETS)})")


def _redo(name: str) -> str:
    return f"run `dvc repro download@{name}` (or `dvc pull` from the team remote)"


# ---- loading -----------------------------------------------------------------------------------


def load_dataset(name: str, root: str | os.PathLike) -> ImageData:
    """Read a downloaded dataset (`data/raw/<name>`) into memory; DataError if missing or corrupt."""
    _check_name(name)
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset {name} not found; {_redo(name)}")
    record = _read_record(root, name)
    if record.get("dataset", name) != name:
        raise DataError(
            f"{root} holds {record['dataset']}, not {name}; pass the {name} directory "
            f"(data/raw/{name}) or {_redo(name)}"
        )
    # Sizes are cheap to check and catch truncated files; DVC already verifies content hashes.
    for rel, info in record.get("files", {}).items():
        path = root / rel
        if not path.is_file():
            raise DataError(f"{path} is missing; {_redo(name)}")
        if path.stat().st_size != info["bytes"]:
            raise DataError(
                f"{path} has {path.stat().st_size} bytes, {info['bytes']} expected "
                f"(truncated or modified); {_redo(name)}"
            )
    try:
        arrays = _read_mnist(root) if name == "mnist" else _read_cifar10(root)
    except DataError as exc:
        raise DataError(f"{exc}; {_redo(name)}") from None
    return ImageData(name=name, **arrays, source=record.get("source", "unknown"))


def _read_record(root: Path, name: str) -> dict[str, Any]:
    path = root / SOURCE_FILE
    if not path.exists():
        return {}  # e.g. a directory torchvision downloaded itself: load it, source unknown
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("files", {}), dict):
            raise ValueError("not a mapping with 'files'")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); {_redo(name)}") from None
    return record


def synthetic_in_memory(name: str, n_train: int, n_test: int, seed: int = 0) -> ImageData:
    """Synthetic data generated in memory, shaped as `load_dataset` returns it (tests, benchmarks)."""
    from torchvision.datasets import MNIST

    x_train, y_train = synthetic.generate(name, n_train, seed=seed, split="train")
    x_test, y_test = synthetic.generate(name, n_test, seed=seed, split="test")
    classes = list(MNIST.classes) if name == "mnist" else list(synthetic.CIFAR10_CLASSES)
    return ImageData(
        name=name,
        train_images=torch.from_numpy(x_train),
        train_labels=torch.from_numpy(y_train),
        test_images=torch.from_numpy(x_test),
        test_labels=torch.from_numpy(y_test),
        classes=classes,
        source="synthetic",
    )


def _read_mnist(root: Path) -> dict[str, Any]:
    """MNIST through torchvision's own class, which reads the extracted IDX files."""
    out: dict[str, Any] = {}
    for split, train in (("train", True), ("test", False)):
        try:
            ds = MNIST(root, train=train)
        except (RuntimeError, AssertionError, ValueError, TypeError, KeyError) as exc:
            folder = Path(root) / "MNIST" / "raw"
            # torchvision's text is empty for a bad IDX header and advises download=True for
            # missing files, which is not how this project gets its data.
            why = str(exc).split(" You can use download=True")[0].rstrip(".") or "bad IDX header"
            raise DataError(f"{folder}: MNIST {split} files missing or corrupt ({why})") from None
        images, labels = ds.data, ds.targets
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DataError(
                f"{root}: MNIST {split} images {tuple(images.shape)} do not match "
                f"{len(labels)} labels of 28x28 digits"
            )
        _check_labels(labels, f"{root} MNIST {split} labels")
        out[f"{split}_images"] = images.unsqueeze(1)  # (N, 1, 28, 28)
        out[f"{split}_labels"] = labels
    out["classes"] = list(MNIST.classes)
    return out


def _read_cifar10(root: Path) -> dict[str, Any]:
    """CIFAR-10's pickled batches, read the way torchvision does (its class insists on the
    upstream md5 of every batch file, which synthetic or re-packed data cannot match)."""
    folder = Path(root) / synthetic.CIFAR10_FOLDER

    def load(name: str) -> dict[str, Any]:
        path = folder / name
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except FileNotFoundError:
            raise DataError(f"{path} is missing") from None
        except Exception as exc:  # noqa: BLE001 - unpickling a damaged file can raise anything
            raise DataError(f"{path} is corrupt ({type(exc).__name__}: {_brief(exc)})") from None

    out: dict[str, Any] = {}
    for split, names in (("train", CIFAR10_BATCHES[:5]), ("test", ["test_batch"])):
        batches = [load(n) for n in names]
        try:
            data = np.concatenate([b["data"] for b in batches])
            labels = np.concatenate([np.asarray(b["labels"], dtype=np.int64) for b in batches])
            images = data.reshape(-1, 3, 32, 32)  # rows are R, G, B planes of 32x32
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{folder}: CIFAR-10 {split} batches are malformed ({exc})") from None
        if images.dtype != np.uint8 or len(images) != len(labels):
            raise DataError(f"{folder}: CIFAR-10 {split} batches hold mismatched data and labels")
        labels_t = torch.from_numpy(labels)
        _check_labels(labels_t, f"{folder} CIFAR-10 {split} labels")
        out[f"{split}_images"] = torch.from_numpy(images)
        out[f"{split}_labels"] = labels_t
    classes = load("batches.meta").get("label_names")
    if not isinstance(classes, list) or len(classes) != 10:
        raise DataError(f"{folder / 'batches.meta'} lacks the 10 label_names")
    out["classes"] = [str(c) for c in classes]
    return out


def _brief(exc: BaseException, limit: int = 100) -> str:
    """An exception as short printable text: a damaged file's bytes can end up in its message."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(exc))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_labels(labels: torch.Tensor, what: str) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise DataError(f"{what} fall outside 0..9")
