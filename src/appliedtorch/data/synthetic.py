"""Synthetic stand-ins for the datasets, written in exactly the upstream file formats.

Offline machines (and the tests) use these instead of the real datasets (`data.source: synthetic`).
Each class has a fixed template (MNIST-format sets: a few pen strokes, their own for each set;
CIFAR-10: coloured blobs on a varying background); every image is its class template, randomly shifted (and, for CIFAR-10, mirrored),
drawn with a random stroke width and contrast, overlaid with a fainter template of another class
and Gaussian noise. A small model learns it in a few steps but not perfectly: the overlaid class
sometimes almost matches the true one, so accuracy numbers stay meaningful.

    >>> images, labels = generate("mnist", 1000, seed=0)   # (1000, 1, 28, 28) uint8, int64 labels
    >>> write_mnist("mirror/", seed=0, n_train=1000, n_test=200)   # the four IDX .gz files
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

from appliedtorch.core.utils import atomic_path
from appliedtorch.data.datasets import CIFAR10_CLASSES, CIFAR10_FOLDER, DATASETS_BY_NAME, Dataset

log = logging.getLogger(__name__)

SHAPES = {name: ds.shape for name, ds in DATASETS_BY_NAME.items()}
NUM_CLASSES = 10
MNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"

_SPLIT_ID = {"train": 0, "test": 1}
# How far images move (pixels each way), how strong the overlaid other class can be, noise amplitude.
_STYLE = {
    "mnist": {"shift": 2, "overlay": 0.8, "noise": 0.2},
    "cifar10": {"shift": 3, "overlay": 1.0, "noise": 0.25},
}
_WIDTHS = (0.9, 1.3, 1.8)  # MNIST stroke widths (pixels) an image is drawn with
_CHUNK = 4096  # images generated at a time: bounds memory at full size


def generate(name: str, n: int, seed: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """`n` images (uint8, N x C x H x W) and labels (int64, 0..9), deterministic for the arguments."""
    if name not in SHAPES:
        raise ValueError(f"unknown dataset '{name}' (choose {' or '.join(SHAPES)})")
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown split '{split}' (choose train or test)")
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    # Templates depend on (name, seed) only, so the train and test splits share their classes.
    kind, name_id = DATASETS_BY_NAME[name].synthetic, DATASETS_BY_NAME[name].synthetic_id
    bank = _mnist_bank(seed, name_id) if kind == "mnist" else _cifar_bank(seed)  # (T, 10, V, D)
    variants, dim = bank.shape[2], bank.shape[3]
    rng = np.random.default_rng([seed, name_id, _SPLIT_ID[split]])
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)  # balanced classes
    images = np.empty((n, dim), dtype=np.uint8)
    style = _STYLE[kind]
    for start in range(0, n, _CHUNK):
        y = labels[start : start + _CHUNK]
        m = len(y)
        other = (y + rng.integers(1, NUM_CLASSES, m)) % NUM_CLASSES  # a different class
        contrast = rng.uniform(0.75, 1.0, (m, 1)).astype(np.float32)
        overlay = rng.uniform(0.0, style["overlay"], (m, 1)).astype(np.float32)
        # In-place float32 arithmetic: at full size this loop is most of the generator's time.
        x = bank[0, y, rng.integers(0, variants, m)]
        x *= contrast
        faint = bank[1, other, rng.integers(0, variants, m)]
        faint *= overlay * contrast
        x += faint
        if kind == "cifar10":
            gains = rng.uniform(0.6, 1.2, (m, 3, 1)).astype(np.float32)  # per-image colour cast
            x = (x.reshape(m, 3, -1) * gains).reshape(m, dim)
            x += _backgrounds(rng, m)
        # Uniform noise: several times cheaper to draw than Gaussian noise, and just as good here.
        noise = rng.random((m, dim), dtype=np.float32)
        noise -= np.float32(0.5)
        noise *= np.float32(2 * style["noise"])
        x += noise
        np.clip(x, 0.0, 1.0, out=x)
        x *= np.float32(255.0)
        x += np.float32(0.5)
        images[start : start + m] = x  # truncating cast to uint8 after the +0.5: rounding
    return images.reshape(n, *SHAPES[name]), labels


def _shifted(templates: np.ndarray, shift: int) -> np.ndarray:
    """Every integer shift by -shift..shift pixels of (K, C, H, W) templates: (K, S, C*H*W)."""
    k, c, h, w = templates.shape
    pad = np.pad(templates, ((0, 0), (0, 0), (shift, shift), (shift, shift)))
    offsets = range(2 * shift + 1)
    out = [pad[:, :, dy : dy + h, dx : dx + w] for dy in offsets for dx in offsets]
    return np.stack(out, axis=1).reshape(k, len(out), c * h * w)


def _mnist_bank(seed: int, name_id: int) -> np.ndarray:
    """(2, 10, variants, 784) float32: [main, overlay] strokes per class, width, and shift."""
    rng = np.random.default_rng([seed, name_id, 99])
    # Three strokes per class with end points inside the central 16x16 box, like a digit.
    ends = rng.uniform(6.0, 21.0, (NUM_CLASSES, 3, 2, 2))  # class, stroke, end, (y, x)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float64)
    pix = np.stack([yy, xx], axis=-1)[None, None]  # (1, 1, 28, 28, 2)
    a = ends[:, :, 0, None, None, :]  # (10, 3, 1, 1, 2)
    ab = ends[:, :, 1, None, None, :] - a
    t = np.clip(((pix - a) * ab).sum(-1) / (ab * ab).sum(-1).clip(1e-9), 0.0, 1.0)
    dist2 = ((pix - a - t[..., None] * ab) ** 2).sum(-1).min(axis=1)  # (10, 28, 28)
    strokes = np.stack([np.exp(-dist2 / (2 * w * w)) for w in _WIDTHS], axis=1)  # (10, W, 28, 28)
    strokes = strokes / strokes.max(axis=(2, 3), keepdims=True)
    shifted = _shifted(strokes.reshape(-1, 1, 28, 28), _STYLE["mnist"]["shift"])  # (10 * W, S, 784)
    bank = shifted.reshape(NUM_CLASSES, -1, 784).astype(np.float32)
    return np.stack([bank, bank])


def _cifar_bank(seed: int) -> np.ndarray:
    """(2, 10, variants, 3072) float32: [object, overlay] per class, mirror, and shift."""
    rng = np.random.default_rng([seed, DATASETS_BY_NAME["cifar10"].synthetic_id, 99])
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    # Three coloured Gaussian blobs per class: centres, radii and colours are the class's look.
    centres = rng.uniform(8.0, 24.0, (NUM_CLASSES, 3, 2))
    radii = rng.uniform(2.5, 6.0, (NUM_CLASSES, 3))
    colours = rng.uniform(0.0, 1.0, (NUM_CLASSES, 3, 3))  # class, blob, RGB
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    blobs = np.exp(-d2 / (2 * radii[..., None, None] ** 2))  # (10, 3, 32, 32)
    objects = np.einsum("kbhw,kbc->kchw", blobs, colours) * 0.7  # (10, 3, 32, 32)
    both = np.concatenate([objects, objects[..., ::-1]])  # mirrored copies: (20, 3, 32, 32)
    shifted = (
        _shifted(both, _STYLE["cifar10"]["shift"])
        .reshape(2, NUM_CLASSES, -1, 3072)
        .transpose(1, 0, 2, 3)
    )
    bank = shifted.reshape(NUM_CLASSES, -1, 3072).astype(np.float32)
    return np.stack([bank, bank * np.float32(0.8)])


def _backgrounds(rng: np.random.Generator, m: int) -> np.ndarray:
    """(m, 3072) float32 smooth colour gradients: scenery that carries no class information."""
    ramp = np.linspace(-0.5, 0.5, 32, dtype=np.float32)
    base = rng.uniform(0.0, 0.5, (m, 3, 1, 1)).astype(np.float32)
    gy = rng.uniform(-0.3, 0.3, (m, 3, 1, 1)).astype(np.float32)
    gx = rng.uniform(-0.3, 0.3, (m, 3, 1, 1)).astype(np.float32)
    return (base + gy * ramp[:, None] + gx * ramp[None, :]).reshape(m, 3072)


# ---- the upstream file formats ----------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte array in MNIST's IDX format: zero, 0x08 (ubyte), ndim, big-endian dims."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler: its dispatch table can be extended
    """Pickle protocol 2 with every str/bytes written as a Python 2 `str`, as upstream CIFAR-10 is.

    So the batches load both the way torchvision reads them (`encoding="latin1"`: str keys) and
    the way the CIFAR-10 page shows (`encoding="bytes"`: b"data" keys), exactly like the originals.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: object, name: str | None = None) -> None:
        # NumPy 2 names its unpickler numpy._core.multiarray, which NumPy 1 cannot import;
        # upstream files name numpy.core.multiarray, which both versions load.
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


_RECONSTRUCT = np.zeros(1).__reduce__()[0]


def py2_pickle_bytes(obj: object) -> bytes:
    """`obj` pickled the way Python 2 pickled the CIFAR-10 batches (protocol 2, byte strings)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def mnist_files(seed: int, n_train: int, n_test: int, name: str = "mnist") -> dict[str, bytes]:
    """The four uncompressed IDX files of MNIST (or another dataset in its format), keyed by
    upstream name without `.gz`."""
    files = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = generate(name, n, seed, split)
        files[MNIST_FILES[split, "images"][:-3]] = idx_bytes(images[:, 0])  # (N, 28, 28)
        files[MNIST_FILES[split, "labels"][:-3]] = idx_bytes(labels)
    return files


def cifar10_files(seed: int, n_train: int, n_test: int) -> dict[str, bytes]:
    """The files inside cifar-10-batches-py/: five training batches, test_batch, batches.meta."""
    files = {}
    images, labels = generate("cifar10", n_train, seed, "train")
    parts = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(parts, start=1):
        files[f"data_batch_{i}"] = _cifar_batch(
            images[idx], labels[idx], f"training batch {i} of 5"
        )
    images, labels = generate("cifar10", n_test, seed, "test")
    files["test_batch"] = _cifar_batch(images, labels, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": len(parts[0]), "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    files["batches.meta"] = py2_pickle_bytes(meta)
    files["readme.html"] = b"<p>Synthetic stand-in for CIFAR-10, generated by appliedtorch.</p>\n"
    return files


def _cifar_batch(images: np.ndarray, labels: np.ndarray, batch_label: str) -> bytes:
    """One batch dict as upstream: data (N, 3072) uint8 rows in R, G, B plane order."""
    names = [f"synthetic_{CIFAR10_CLASSES[y]}_{i:06d}.png" for i, y in enumerate(labels)]
    batch = {
        "batch_label": batch_label,
        "labels": [int(y) for y in labels],
        "data": images.reshape(len(images), 3072),
        "filenames": names,
    }
    return py2_pickle_bytes(batch)


def write_extracted(ds: Dataset, directory: Path, seed: int, n_train: int, n_test: int) -> None:
    """The extracted upstream layout of `ds` under `directory`, generated: what extracting
    synthetic archives would give."""
    if ds.synthetic == "mnist":
        files = mnist_files(seed, n_train, n_test, ds.name)
    else:
        files = cifar10_files(seed, n_train, n_test)
    folder = directory / ds.folder
    folder.mkdir(parents=True)
    for fname, data in files.items():
        (folder / fname).write_bytes(data)
    log.info(
        "generated synthetic %s: %d train + %d test images (seed %d)",
        ds.name,
        n_train,
        n_test,
        seed,
    )


def write_mnist(
    directory: str | os.PathLike, seed: int, n_train: int, n_test: int, compresslevel: int = 6
) -> list[Path]:
    """Write the four MNIST `.gz` files under their upstream names; return their paths."""
    paths = []
    for name, data in mnist_files(seed, n_train, n_test).items():
        path = Path(directory) / f"{name}.gz"
        # filename="" and mtime=0 keep the gzip header, and so the md5, reproducible.
        with (
            atomic_path(path) as tmp,
            open(tmp, "wb") as raw,
            gzip.GzipFile("", "wb", compresslevel, raw, mtime=0) as gz,
        ):
            gz.write(data)
        paths.append(path)
    return paths


def write_cifar10(
    directory: str | os.PathLike, seed: int, n_train: int, n_test: int, compresslevel: int = 6
) -> Path:
    """Write `cifar-10-python.tar.gz` holding cifar-10-batches-py/ as upstream; return its path."""
    path = Path(directory) / CIFAR10_ARCHIVE
    with (
        atomic_path(path) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile("", "wb", compresslevel, raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        folder = tarfile.TarInfo(CIFAR10_FOLDER)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for name, data in cifar10_files(seed, n_train, n_test).items():
            info = tarfile.TarInfo(f"{CIFAR10_FOLDER}/{name}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def write_mirror(
    directory: str | os.PathLike,
    seed: int = 0,
    mnist: tuple[int, int] = (60000, 10000),
    cifar10: tuple[int, int] = (50000, 10000),
    md5sums: bool = True,
) -> list[Path]:
    """A directory laid out like the upstream servers (both datasets), with an MD5SUMS file."""
    from torchvision.datasets.utils import calculate_md5

    directory = Path(directory)
    paths = write_mnist(directory, seed, *mnist) + [write_cifar10(directory, seed, *cifar10)]
    if md5sums:
        lines = "".join(f"{calculate_md5(p)}  {p.name}\n" for p in paths)
        with atomic_path(directory / "MD5SUMS") as tmp:
            tmp.write_text(lines)
    return paths


def main(argv: list[str] | None = None) -> None:
    """`python -m appliedtorch.data.synthetic DIR`: write a synthetic mirror to try `data.source: DIR`."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mnist", type=int, nargs=2, default=(60000, 10000), metavar=("TRAIN", "TEST")
    )
    parser.add_argument(
        "--cifar10", type=int, nargs=2, default=(50000, 10000), metavar=("TRAIN", "TEST")
    )
    parser.add_argument("--no-md5sums", action="store_true", help="leave out the MD5SUMS file")
    args = parser.parse_args(argv)
    paths = write_mirror(args.directory, args.seed, args.mnist, args.cifar10, not args.no_md5sums)
    print("\n".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
