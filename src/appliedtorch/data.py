"""Datasets: where MNIST and CIFAR-10 come from, download + verify, and loading into memory.

The download stage puts one dataset into `data/raw/<name>/` in torchvision's on-disk layout
(extracted, so loading is fast), plus `source.json` saying where it came from:

    data/raw/mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    data/raw/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta,readme.html}

    python stages/download.py --params params.yaml --dataset mnist --out data/raw/mnist
    >>> data = load_dataset("mnist", "data/raw/mnist")     # uint8 tensors, classes, source

Sources (`data.source`): `upstream` (torchvision's URLs and md5 sums, MNIST's mirrors in order),
a mirror (a directory or an http(s):// base URL with the upstream file names, verified against
its `MD5SUMS` file when it has one, else against the upstream sums), or `synthetic` (generated,
see `appliedtorch.synthetic`).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import os
import pickle
import secrets
import shutil
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.datasets import CIFAR10, MNIST
from torchvision.datasets.utils import USER_AGENT, calculate_md5
from tqdm import tqdm

from appliedtorch import synthetic
from appliedtorch.errors import DataError

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


# ---- download ----------------------------------------------------------------------------------


def download(
    name: str,
    out_dir: str | os.PathLike,
    source: str = "upstream",
    *,
    timeout: float = 10.0,
    retries: int = 2,
    backoff: float = 0.5,
    synthetic_seed: int = 0,
    synthetic_sizes: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Fetch (or generate) dataset `name` into `out_dir`, verified; return its source record.

    Everything is staged in a temporary directory beside `out_dir`, which replaces `out_dir`
    only once every file passed its checksum and the dataset loads; on any failure nothing is
    left behind and DataError says which file, which URL(s) and what to do.
    """
    _check_name(name)
    out = Path(out_dir)
    try:
        created = _make_parents(out.parent)
        # Not tempfile.mkdtemp: its 0700 mode would stick to data/raw/<name> after the rename.
        staging = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        staging.mkdir()
    except OSError as exc:
        raise DataError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        if source == "synthetic":
            sizes = synthetic_sizes or DEFAULT_SIZES[name]
            _write_synthetic(name, staging, synthetic_seed, *sizes)
            record: dict[str, Any] = {
                "synthetic": {"seed": synthetic_seed, "train": sizes[0], "test": sizes[1]}
            }
        else:
            fetched = _fetch_all(name, source, staging / ".archives", timeout, retries, backoff)
            _extract(name, staging, fetched, source)
            shutil.rmtree(staging / ".archives")
            record = {"downloads": [f.as_record() for f in fetched]}
        try:
            data = _read_mnist(staging) if name == "mnist" else _read_cifar10(staging)
        except DataError as exc:
            raise DataError(f"{name} from {source} is not a valid dataset: {exc}") from None
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        record = {
            "dataset": name,
            "source": source,
            **record,
            "train": len(data["train_labels"]),
            "test": len(data["test_labels"]),
            "files": {
                p.relative_to(staging).as_posix(): {
                    "md5": calculate_md5(p),
                    "bytes": p.stat().st_size,
                }
                for p in files
            },
        }
        (staging / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _replace_dir(staging, out)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        for d in reversed(created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if still empty
        if isinstance(exc, OSError):  # e.g. the disk filled up
            raise DataError(f"cannot write {out}: {exc.strerror or exc}") from None
        raise
    return record


def _make_parents(path: Path) -> list[Path]:
    """mkdir -p, returning the directories it created (outermost first) for cleanup."""
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    return missing


def _replace_dir(new: Path, out: Path) -> None:
    """Rename `new` onto `out`; an existing `out` is moved aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{os.getpid()}.old")
        os.replace(out, old)
    os.replace(new, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_synthetic(name: str, staging: Path, seed: int, n_train: int, n_test: int) -> None:
    """The extracted upstream layout, generated: what extracting synthetic archives would give."""
    if name == "mnist":
        folder, files = staging / "MNIST" / "raw", synthetic.mnist_files(seed, n_train, n_test)
    else:
        folder = staging / synthetic.CIFAR10_FOLDER
        files = synthetic.cifar10_files(seed, n_train, n_test)
    folder.mkdir(parents=True)
    for fname, data in files.items():
        (folder / fname).write_bytes(data)
    log.info(
        "generated synthetic %s: %d train + %d test images (seed %d)", name, n_train, n_test, seed
    )


@dataclass
class _Fetched:
    """One verified file of the source, in the staging area."""

    name: str
    path: Path
    url: str
    md5: str
    checked_against: str  # "MD5SUMS" or "upstream md5"

    def as_record(self) -> dict[str, str]:
        return {
            "file": self.name,
            "url": self.url,
            "md5": self.md5,
            "checked_against": self.checked_against,
        }


class _FetchError(Exception):
    """One attempt at one URL failed; `permanent` ones are not retried; `missing`: no such file."""

    def __init__(self, reason: str, permanent: bool = False, missing: bool = False):
        super().__init__(reason)
        self.permanent = permanent or missing
        self.missing = missing


def _hint(name: str, source: str) -> str:
    other = "a mirror (a directory or http(s):// URL with the upstream file names) or synthetic"
    if source != "upstream":
        other = "upstream, another mirror or synthetic"
    return f"set data.source in params.yaml to {other}, or get data/raw/{name} with `dvc pull`"


def _fetch_all(
    name: str, source: str, dest: Path, timeout: float, retries: int, backoff: float
) -> list[_Fetched]:
    """Every file of the dataset from `source` into `dest`, each verified by md5."""
    upstream = UPSTREAM[name]
    dest.mkdir(parents=True)
    if source == "upstream":
        bases, sums, against = upstream.bases, {}, "upstream md5"
    else:
        bases = [_mirror_base(source)]
        sums = _read_md5sums(bases[0], dest, timeout, retries, backoff, name, source)
        against = "MD5SUMS" if sums else "upstream md5"
    fetched = []
    for fname, upstream_md5 in upstream.files:
        md5 = sums.get(fname, upstream_md5)
        checked = "MD5SUMS" if fname in sums else "upstream md5"
        tried = []
        for base in bases:
            url = _join(base, fname)
            try:
                _fetch_verified(url, dest / fname, md5, checked, timeout, retries, backoff)
            except _FetchError as exc:
                tried.append(f"{url} ({exc})")
                continue
            fetched.append(_Fetched(fname, dest / fname, url, md5, checked))
            break
        else:
            raise DataError(
                f"cannot get {fname} for {name}: tried {'; '.join(tried)}; {_hint(name, source)}"
            )
    log.info("%s: %d file(s) from %s verified against %s", name, len(fetched), source, against)
    return fetched


def _mirror_base(source: str) -> str:
    """An http(s) base URL, or an existing directory as a path string."""
    if source.startswith(("http://", "https://")):
        return source if source.endswith("/") else source + "/"
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data.source '{source}' is not upstream, synthetic, an http(s):// URL or an existing "
            "directory; set data.source in params.yaml"
        )
    return str(path.resolve())


def _join(base: str, fname: str) -> str:
    return base + fname if base.startswith(("http://", "https://")) else str(Path(base) / fname)


def _read_md5sums(
    base: str, dest: Path, timeout: float, retries: int, backoff: float, name: str, source: str
) -> dict[str, str]:
    """The mirror's MD5SUMS (`<md5>  <file>` lines) as {file: md5}; {} when it has none."""
    url = _join(base, MD5SUMS)
    tmp = dest / MD5SUMS
    try:
        _fetch_with_retries(url, tmp, timeout, retries, backoff, quiet=True)
    except _FetchError as exc:
        if exc.missing:
            log.info("%s has no %s: verifying against the upstream md5 sums", source, MD5SUMS)
            return {}
        raise DataError(f"cannot read {url} for {name} ({exc}); {_hint(name, source)}") from None
    sums = {}
    for number, line in enumerate(tmp.read_text(errors="replace").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        md5, _, fname = line.partition(" ")
        fname = fname.strip().lstrip("*").removeprefix("./")
        if len(md5) != 32 or not fname or any(c not in "0123456789abcdefABCDEF" for c in md5):
            raise DataError(f"{url} line {number} is not in md5sum format: {line.strip()!r}")
        sums[Path(fname).name] = md5.lower()
    tmp.unlink()
    return sums


def _fetch_verified(
    url: str, dest: Path, md5: str, against: str, timeout: float, retries: int, backoff: float
) -> None:
    """Fetch to a temporary name; rename onto `dest` only once its md5 matches."""
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch_with_retries(url, part, timeout, retries, backoff)
        got = calculate_md5(part)
        if got != md5:
            size = part.stat().st_size
            raise _FetchError(
                f"md5 {got} of {size} bytes does not match the {against} {md5}: corrupt or truncated",
                permanent=True,
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def _fetch_with_retries(
    url: str, dest: Path, timeout: float, retries: int, backoff: float, quiet: bool = False
) -> None:
    """_fetch once, and again up to `retries` times after transient errors, backing off 2x."""
    for attempt in range(retries + 1):
        try:
            _fetch(url, dest, timeout, quiet)
            return
        except _FetchError as exc:
            if exc.permanent or attempt == retries:
                raise
            delay = backoff * 2**attempt
            log.warning("%s: %s; retry %d/%d in %.1f s", url, exc, attempt + 1, retries, delay)
            time.sleep(delay)


def _fetch(url: str, dest: Path, timeout: float, quiet: bool = False) -> None:
    """One attempt: copy a mirror file, or stream a URL (with a progress bar) into `dest`."""
    if not url.startswith(("http://", "https://")):
        try:
            shutil.copyfile(url, dest)
        except FileNotFoundError:
            raise _FetchError("no such file", missing=True) from None
        except OSError as exc:
            raise _FetchError(exc.strerror or str(exc), permanent=True) from None
        return
    # torchvision's download_url has no timeout (urlopen would wait forever on a stalled
    # server), no retries, and writes straight to the final name; hence this small loop.
    _resolve(url, timeout)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = response.length
            done = 0
            with (
                open(dest, "wb") as fh,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=Path(url).name,
                    disable=True if quiet else None,  # None: only on a terminal
                ) as bar,
            ):
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        # 4xx will not change on retry (408 and 429 might); 5xx is the server's trouble.
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        reason = "not found (HTTP 404)" if exc.code == 404 else f"HTTP {exc.code} {exc.reason}"
        raise _FetchError(reason, permanent=permanent, missing=exc.code in (404, 410)) from None
    except urllib.error.URLError as exc:
        raise _network_error(exc.reason, timeout) from None
    except (OSError, HTTPException) as exc:  # timeouts and resets while reading the body
        raise _network_error(exc, timeout) from None
    if total is not None and done < total:
        raise _FetchError(f"connection closed after {done} of {total} bytes")


def _network_error(reason: object, timeout: float) -> _FetchError:
    """A short reason for a connection-level failure, and whether retrying can help."""
    if isinstance(reason, socket.gaierror):
        # "Name or service not known" will not change in a second; "temporary failure" may.
        permanent = reason.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5))
        return _FetchError(f"host not found ({reason.strerror})", permanent=permanent)
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return _FetchError(f"no answer within {timeout:g} s")
    if (
        isinstance(reason, ConnectionRefusedError)
        or getattr(reason, "errno", None) == errno.ECONNREFUSED
    ):
        return _FetchError("connection refused")
    text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return _FetchError(text)


def _resolve(url: str, timeout: float) -> None:
    """Look the host up within `timeout`: urlopen's timeout does not cover DNS, which can hang
    for tens of seconds on a machine whose resolver is unreachable."""
    host = urllib.parse.urlsplit(url).hostname or ""
    result: dict[str, BaseException] = {}

    def lookup() -> None:
        try:
            socket.getaddrinfo(host, None)
        except OSError as exc:
            result["error"] = exc

    thread = threading.Thread(target=lookup, daemon=True)  # daemon: a hung lookup cannot block exit
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise _FetchError(f"host lookup for {host} took over {timeout:g} s")
    if "error" in result:
        raise _network_error(result["error"], timeout)


def _extract(name: str, staging: Path, fetched: list[_Fetched], source: str) -> None:
    """Unpack the verified archives into torchvision's layout under `staging`."""
    hint = _hint(name, source)
    if name == "mnist":
        folder = staging / "MNIST" / "raw"
        folder.mkdir(parents=True)
        for f in fetched:
            try:
                with gzip.open(f.path, "rb") as src, open(folder / f.name[:-3], "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise DataError(
                    f"{f.name} from {f.url} is not a valid gzip file ({exc}); {hint}"
                ) from None
        return
    (archive,) = fetched
    folder = staging / synthetic.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    try:
        with tarfile.open(archive.path, "r:gz") as tar:
            # Only the known members, as plain files: nothing in the archive can write elsewhere.
            for member in [*CIFAR10_BATCHES, "readme.html"]:
                try:
                    info = tar.getmember(f"{synthetic.CIFAR10_FOLDER}/{member}")
                except KeyError:
                    if member == "readme.html":
                        continue
                    raise DataError(
                        f"{archive.name} from {archive.url} lacks "
                        f"{synthetic.CIFAR10_FOLDER}/{member}; {hint}"
                    ) from None
                src = tar.extractfile(info) if info.isfile() else None
                if src is None:
                    raise DataError(f"{archive.name}: {info.name} is not a regular file; {hint}")
                with src, open(folder / member, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(
            f"{archive.name} from {archive.url} is not a valid tar.gz ({exc}); {hint}"
        ) from None
