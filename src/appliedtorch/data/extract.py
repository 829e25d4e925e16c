"""Unpacking verified archives into torchvision's layout, every member bounded.

    >>> gunzip(Path("train-images-idx3-ubyte.gz"), Path("MNIST/raw/train-images-idx3-ubyte"), cap)

A decompression bomb stops at the most the dataset can hold (MAX_MEMBER_BYTES), with memory flat:
everything is streamed in CHUNK-sized pieces and only the known member names are ever written.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import Any

from appliedtorch.core.errors import DataError
from appliedtorch.data.datasets import CIFAR10_BATCHES, CIFAR10_FOLDER, Dataset
from appliedtorch.data.limits import CHUNK, MAX_MEMBER_BYTES, brief, too_large
from appliedtorch.data.transport import Fetched


class TooLarge(Exception):
    """An archive member inflates past what the dataset can hold."""


class BadArchive(Exception):
    """An archive lacks a member, or holds one that is not a plain file."""


def gunzip(src: Path, dst: Path | None, cap: int) -> str:
    """Decompress `src` to `dst` (or only read it, for None), stopping as soon as the output
    would pass `cap` bytes; return the md5 of the decompressed bytes."""
    with open(src, "rb") as f:  # gzip's trailer states the size (mod 2^32): a cheap first look
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") > cap:
                raise TooLarge(too_large("says it inflates", cap))
    done = 0
    md5 = hashlib.md5()
    with gzip.open(src, "rb") as gz, open(dst or os.devnull, "wb") as out:
        while chunk := gz.read(CHUNK):
            done += len(chunk)
            if done > cap:
                raise TooLarge(too_large("inflates", cap))
            md5.update(chunk)
            out.write(chunk)
    return md5.hexdigest()


class CappedReader:
    """A file's read() that raises TooLarge once more than `cap` bytes were read in all."""

    def __init__(self, f: Any, cap: int):
        self._f, self._cap, self._done = f, cap, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n if 0 <= n <= CHUNK else CHUNK)
        self._done += len(data)
        if self._done > self._cap:
            raise TooLarge(too_large("inflates", self._cap))
        return data


def untar_cifar10(archive: Path, folder: Path, cap: int) -> None:
    """The known members of cifar-10-batches-py/ as plain files into `folder`.

    The tar is streamed: each member's size is checked from its header before its data is
    read, the whole stream is capped, and nothing but the known names is written anywhere.
    """
    folder.mkdir(parents=True)
    wanted = {f"{CIFAR10_FOLDER}/{m}": m for m in [*CIFAR10_BATCHES, "readme.html"]}
    seen: set[str] = set()
    total_cap = (len(wanted) + 1) * cap + CHUNK
    with (
        gzip.open(archive, "rb") as gz,
        tarfile.open(fileobj=CappedReader(gz, total_cap), mode="r|") as tar,
    ):
        for info in tar:
            if info.size > cap:
                raise TooLarge(
                    too_large(f"holds {brief(info.name, 60)} of {info.size} bytes,", cap)
                )
            member = wanted.get(info.name.removeprefix("./"))
            if member is None:
                continue
            if member in seen:
                raise BadArchive(f"{info.name} appears twice")
            src = tar.extractfile(info) if info.isfile() else None
            if src is None:
                raise BadArchive(f"{info.name} is not a regular file")
            with src, open(folder / member, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            seen.add(member)
    missing = [m for m in CIFAR10_BATCHES if m not in seen]
    if missing:
        raise BadArchive(f"lacks {CIFAR10_FOLDER}/{missing[0]}")


def extract(ds: Dataset, staging: Path, fetched: list[Fetched], hint: str) -> None:
    """Unpack the verified files into torchvision's layout under `staging`; DataError naming the
    file and its URL (and `hint`, what to do) if one is not a valid archive or is a bomb."""
    cap = MAX_MEMBER_BYTES[ds.format]
    folder = staging / ds.folder
    for f in fetched:
        what = f"{f.name} from {f.url}"
        try:
            if ds.format == "idx":
                folder.mkdir(parents=True, exist_ok=True)
                gunzip(f.path, folder / f.name.removesuffix(".gz"), cap)
            else:
                untar_cifar10(f.path, folder, cap)
        except TooLarge as exc:
            raise DataError(f"{what} {exc}; {hint}") from None
        except BadArchive as exc:
            raise DataError(f"{what}: {exc}; {hint}") from None
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
            kind = "gzip file" if ds.format == "idx" else "tar.gz"
            raise DataError(f"{what} is not a valid {kind} ({brief(exc)}); {hint}") from None
