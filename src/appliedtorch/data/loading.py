"""Datasets on disk and in memory: the upstream files and sums, and loading into uint8 tensors.

The download stage (`appliedtorch.data.fetch`) puts one dataset into `data/raw/<name>/` in
torchvision's on-disk layout (extracted, so loading is fast), plus `source.json` saying where it
came from:

    data/raw/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    data/raw/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta,readme.html}

    >>> data = load_dataset("mnist", "data/raw/mnist")     # uint8 tensors, classes, source
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR10, MNIST

import appliedtorch.data.synthetic as synthetic
from appliedtorch.core.errors import DataError
from appliedtorch.core.utils import file_md5

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
    # {path relative to the dataset directory: md5} of the files checked on loading, so the
    # run's DVC hash (tracking.data_tags) need not read them a second time
    file_md5: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

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
    verified = check_files(root, record, name)
    try:
        arrays = _read_mnist(root) if name == "mnist" else _read_cifar10(root)
    except DataError as exc:
        raise DataError(f"{exc}; {_redo(name)}") from None
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
                f"{root / SOURCE_FILE} is malformed at '{_brief(rel, 60)}'; {_redo(name)}"
            )
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise DataError(f"{root / SOURCE_FILE} names a file outside {root}; {_redo(name)}")
        if not path.is_file():
            raise DataError(f"{path} is missing; {_redo(name)}")
        if path.stat().st_size != info["bytes"]:
            raise DataError(
                f"{path} has {path.stat().st_size} bytes, {info['bytes']} expected "
                f"(truncated or modified); {_redo(name)}"
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
                f"{_redo(name)}"
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
        return load_cifar_batch(folder / name)

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


# What a CIFAR-10 batch pickle may name: numpy's array reconstruction (under its NumPy 1 and 2
# module names; protocol 5 uses _frombuffer), ndarray and dtype, and `_codecs.encode`, which
# protocol-2 pickles written by Python 3 use for bytes. Dicts, lists, str and int are opcodes, not globals. Anything else (os.system,
# builtins.eval, subprocess.Popen, ...) can only be there to run code while loading.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickle(pickle.UnpicklingError):
    """A pickle names a global that the CIFAR-10 format never needs."""


class _CifarUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only the globals of `_ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except (KeyError, TypeError):
            raise UnsafePickle(f"{module}.{name}") from None


def load_cifar_batch(path: str | os.PathLike) -> Any:
    """One CIFAR-10 batch (or batches.meta) unpickled with only numpy arrays and plain containers
    allowed; DataError naming the file if it is missing, damaged or names anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except UnsafePickle as exc:
        raise DataError(
            f"{path} is not a CIFAR-10 batch: its pickle calls {_brief(exc, 60)}, which the format "
            "never needs (refused: unpickling it could run code)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - unpickling a damaged file can raise anything
        raise DataError(f"{path} is corrupt ({type(exc).__name__}: {_brief(exc)})") from None


def _brief(exc: BaseException | str, limit: int = 100) -> str:
    """An exception as short printable text: a damaged file's bytes can end up in its message."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(exc)[: limit * 4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_labels(labels: torch.Tensor, what: str) -> None:
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) > 9):
        raise DataError(f"{what} fall outside 0..9")
