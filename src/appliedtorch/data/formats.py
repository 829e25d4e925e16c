"""The upstream file formats, read strictly: MNIST's IDX files and CIFAR-10's pickled batches.

    >>> arrays = read_dataset(DATASETS_BY_NAME["mnist"], Path("data/raw/mnist"))

A file is parsed into the exact upstream schema (magic numbers, dimensions, dtypes, shapes,
counts, labels in 0..9, dict keys) before anything is converted, so a file that is not the
dataset is refused with one line naming it and never reinterpreted. A CIFAR-10 pickle is read by
an unpickler that resolves only numpy's array reconstruction and bounds the number of objects,
the nesting and the sharing of containers (a list of references to a list of references ...
would otherwise expand to billions of elements in the first conversion).
"""

from __future__ import annotations

import codecs
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliedtorch.core.errors import DataError
from appliedtorch.data.datasets import CIFAR10_BATCHES, MNIST_FILES, Dataset
from appliedtorch.data.labels import check_class_names
from appliedtorch.data.limits import (
    MAX_PICKLE_MARKS,
    MAX_PICKLE_OPS,
    MAX_PICKLE_STACK,
    MAX_ROWS,
    brief,
)

NUM_CLASSES = 10

# ---- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------


def read_idx(path: Path, ndim: int, max_rows: int = MAX_ROWS["idx"]) -> np.ndarray:
    """An unsigned-byte IDX file of `ndim` dimensions (0, 0, 0x08, ndim, big-endian sizes, data),
    its size exactly what the header states; DataError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
            size = os.fstat(f.fileno()).st_size
            if len(head) < 4 + 4 * ndim or head[:4] != bytes([0, 0, 0x08, ndim]):
                raise DataError(
                    f"{path}: bad IDX header {head[:4].hex() or 'none'} "
                    f"(an unsigned-byte file of {ndim} dimension(s) starts 000008{ndim:02x})"
                )
            dims = struct.unpack(f">{ndim}I", head[4:])
            if dims[0] > max_rows:
                raise DataError(f"{path}: {dims[0]} items, more than {max_rows}: refused")
            expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64))
            if size != expected:
                raise DataError(f"{path}: {size} bytes, its header {dims} says {expected}")
            return np.fromfile(f, dtype=np.uint8).reshape(dims)
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except OSError as exc:
        raise DataError(f"{path} is unreadable ({brief(exc.strerror or exc)})") from None


def check_labels(labels: np.ndarray | list[int], what: str) -> None:
    """DataError unless every label is a class index 0..9."""
    labels = np.asarray(labels)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        bad = int(labels.max()) if int(labels.max()) >= NUM_CLASSES else int(labels.min())
        raise DataError(f"{what}: label {bad} outside 0..{NUM_CLASSES - 1}")


def read_idx_dataset(ds: Dataset, root: Path) -> dict[str, Any]:
    """The four IDX files of an MNIST-format dataset as uint8 (N, 1, H, W) images, int64 labels."""
    folder = Path(root) / ds.folder
    out: dict[str, Any] = {}
    for split, images_gz, labels_gz in (
        ("train", MNIST_FILES[0], MNIST_FILES[1]),
        ("test", MNIST_FILES[2], MNIST_FILES[3]),
    ):
        images = read_idx(folder / images_gz[:-3], 3)
        labels = read_idx(folder / labels_gz[:-3], 1)
        if images.shape[1:] != ds.shape[1:]:
            raise DataError(
                f"{folder / images_gz[:-3]}: images of {images.shape[1:]}, not {ds.shape[1:]}"
            )
        if len(images) != len(labels):
            raise DataError(
                f"{folder}: {ds.name} {split} has {len(images)} images and {len(labels)} labels"
            )
        check_labels(labels, f"{folder / labels_gz[:-3]}")
        out[f"{split}_images"] = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 28, 28)
        out[f"{split}_labels"] = torch.from_numpy(labels.astype(np.int64))
    out["classes"] = list(ds.classes)
    return out


# ---- CIFAR-10's pickled batches -----------------------------------------------------------------

# What a CIFAR-10 batch pickle may name: numpy's array reconstruction (under its NumPy 1 and 2
# module names; protocol 5 uses _frombuffer), ndarray and dtype, and `_codecs.encode`, which
# protocol-2 pickles written by Python 3 use for bytes. Dicts, lists, str and int are opcodes,
# not globals. Anything else (os.system, builtins.eval, ...) can only be there to run code.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}
_CONTAINERS = (list, dict, set, frozenset, tuple, bytearray, np.ndarray)
_GETS = {pickle.GET[0], pickle.BINGET[0], pickle.LONG_BINGET[0], pickle.DUP[0]}


class UnsafePickle(pickle.UnpicklingError):
    """A pickle names a global that the CIFAR-10 format never needs."""


class PickleTooComplex(pickle.UnpicklingError):
    """A pickle has more objects, nesting or sharing than a CIFAR-10 batch ever has."""


def _bounded(op: int, load: Any) -> Any:
    def step(self: CifarUnpickler) -> None:
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise PickleTooComplex(f"more than {MAX_PICKLE_OPS} pickle operations")
        load(self)
        if len(self.metastack) > MAX_PICKLE_MARKS:
            raise PickleTooComplex(f"containers nested more than {MAX_PICKLE_MARKS} deep")
        if len(self.stack) > MAX_PICKLE_STACK:
            raise PickleTooComplex(f"more than {MAX_PICKLE_STACK} objects pending")
        if op in _GETS and isinstance(self.stack[-1], _CONTAINERS):
            # Upstream never shares a container; shared ones nest into exponential size.
            raise PickleTooComplex(f"a shared {type(self.stack[-1]).__name__}")

    return step


class CifarUnpickler(pickle._Unpickler):  # the pure-Python unpickler: each opcode can be bounded
    """Unpickler that resolves only ALLOWED_GLOBALS and bounds objects, nesting and sharing."""

    dispatch = {op: _bounded(op, load) for op, load in pickle._Unpickler.dispatch.items()}

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")
        self.ops = 0

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[module, name]
        except (KeyError, TypeError):
            raise UnsafePickle(f"{module}.{name}") from None


def load_cifar_batch(path: str | os.PathLike) -> Any:
    """One CIFAR-10 batch (or batches.meta) unpickled with only numpy arrays and plain containers
    allowed; DataError naming the file if it is missing, damaged or names anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return CifarUnpickler(f).load()
    except FileNotFoundError:
        raise DataError(f"{path} is missing") from None
    except UnsafePickle as exc:
        raise DataError(
            f"{path} is not a CIFAR-10 batch: its pickle calls {brief(exc, 60)}, which the format "
            "never needs (refused: unpickling it could run code)"
        ) from None
    except PickleTooComplex as exc:
        raise DataError(
            f"{path} is not a CIFAR-10 batch: its pickle holds {exc} (refused)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - unpickling a damaged file can raise anything
        raise DataError(f"{path} is corrupt ({type(exc).__name__}: {brief(exc)})") from None


BATCH_KEYS = {"batch_label", "labels", "data", "filenames"}
META_KEYS = {"num_cases_per_batch", "label_names", "num_vis"}


def _keys(path: Path, obj: Any, keys: set[str]) -> None:
    if type(obj) is not dict:
        raise DataError(f"{path} is not a CIFAR-10 batch: a {type(obj).__name__}, not a dict")
    if set(obj) != keys:
        extra = sorted(map(str, set(obj) - keys))
        missing = sorted(keys - set(obj))
        what = f"extra key {brief(extra[0], 40)!r}" if extra else f"no key {missing[0]!r}"
        raise DataError(f"{path} is not a CIFAR-10 batch: {what}")


def _all(path: Path, field: str, values: Any, kind: type, n: int) -> None:
    if type(values) is not list or len(values) != n:
        size = len(values) if type(values) is list else type(values).__name__
        raise DataError(f"{path}: '{field}' must be a list of {n} {kind.__name__}s (got {size})")
    for value in values:
        if type(value) is not kind:
            raise DataError(
                f"{path}: '{field}' holds a {type(value).__name__}, not only {kind.__name__}s"
            )


def parse_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A batch file as (uint8 (N, 3072) rows, int64 labels), checked against upstream's schema."""
    batch = load_cifar_batch(path)
    _keys(path, batch, BATCH_KEYS)
    data = batch["data"]
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2:
        what = f"{data.dtype} {data.shape}" if type(data) is np.ndarray else type(data).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of (N, 3072) (got {what})")
    n = data.shape[0]
    if data.shape[1] != 3072 or n > MAX_ROWS["cifar"]:
        raise DataError(
            f"{path}: 'data' has shape {data.shape}, not (N <= {MAX_ROWS['cifar']}, 3072)"
        )
    if type(batch["batch_label"]) is not str:
        raise DataError(
            f"{path}: 'batch_label' is a {type(batch['batch_label']).__name__}, not text"
        )
    _all(path, "labels", batch["labels"], int, n)
    _all(path, "filenames", batch["filenames"], str, n)
    check_labels(batch["labels"], f"{path}")
    return data, np.array(batch["labels"], dtype=np.int64)


def parse_cifar_meta(path: Path) -> list[str]:
    """batches.meta's ten class names, checked against upstream's schema."""
    meta = load_cifar_batch(path)
    _keys(path, meta, META_KEYS)
    _all(path, "label_names", meta["label_names"], str, NUM_CLASSES)
    if meta["num_vis"] != 3072 or type(meta["num_cases_per_batch"]) is not int:
        raise DataError(f"{path}: num_vis must be 3072 and num_cases_per_batch an integer")
    try:
        check_class_names(meta["label_names"])  # the rule predict applies to a model's classes
    except ValueError as exc:
        raise DataError(f"{path}: 'label_names': {brief(exc, 160)}") from None
    return list(meta["label_names"])


def read_cifar_dataset(ds: Dataset, root: Path) -> dict[str, Any]:
    """CIFAR-10's batches as uint8 (N, 3, 32, 32) images and int64 labels, each file checked."""
    folder = Path(root) / ds.folder
    out: dict[str, Any] = {}
    for split, names in (("train", CIFAR10_BATCHES[:5]), ("test", ["test_batch"])):
        parsed = [parse_cifar_batch(folder / n) for n in names]
        data = np.concatenate([d for d, _ in parsed])
        out[f"{split}_images"] = torch.from_numpy(data.reshape(-1, *ds.shape))  # R, G, B planes
        out[f"{split}_labels"] = torch.from_numpy(np.concatenate([y for _, y in parsed]))
    out["classes"] = parse_cifar_meta(folder / "batches.meta")
    return out


def read_dataset(ds: Dataset, root: Path) -> dict[str, Any]:
    """A dataset's extracted files in memory, parsed by its format."""
    reader = read_idx_dataset if ds.format == "idx" else read_cifar_dataset
    return reader(ds, root)
