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
from appliedtorch.data.download.transport import Fetched
from appliedtorch.data.limits import (
    CHUNK,
    MAX_ARCHIVE_MEMBERS,
    MAX_MEMBER_BYTES,
    brief,
    too_large,
)


class TooLarge(Exception):
    """An archive member inflates past what the dataset can hold."""


class BadArchive(Exception):
    """An archive lacks a member, or holds one that is not a plain file."""


def gunzip(src: Path, dst: Path | None, cap: int) -> str:
    """Decompress `src` to `dst` (or only read it, for None), stopping as soon as the output
    would pass `cap` bytes; return the md5 of the decompressed bytes.

    Streamed with zlib (memory flat), member after member as gzip does; zero padding after the
    last member is allowed (as gzip allows it), other bytes there are refused by name.
    """
    done = 0
    md5 = hashlib.md5()
    with open(src, "rb") as f, open(dst or os.devnull, "wb") as out:
        data = f.read(CHUNK)
        while True:
            z = zlib.decompressobj(GZIP_WBITS)
            while not z.eof:
                chunk = z.decompress(data, CHUNK)  # at most CHUNK out per call: memory flat
                if not chunk and not data:
                    raise EOFError("the gzip stream ends early: truncated")
                done += len(chunk)
                if done > cap:
                    raise TooLarge(too_large("inflates", cap))
                md5.update(chunk)
                out.write(chunk)
                data = z.unconsumed_tail or (b"" if z.eof else f.read(CHUNK))
            data = z.unused_data + f.read(CHUNK)
            if not data.startswith(GZIP_MAGIC):  # no further member
                _only_padding(data, f)
                break
    return md5.hexdigest()


GZIP_WBITS = 16 + zlib.MAX_WBITS  # gzip header and trailer, checked by zlib
GZIP_MAGIC = b"\x1f\x8b"


def _only_padding(rest: bytes, f: Any) -> None:
    """BadArchive unless what follows the gzip stream (`rest`, then the file) is zero bytes."""
    extra = len(rest) + os.fstat(f.fileno()).st_size - f.tell()
    while rest:
        if rest.strip(b"\0"):
            raise BadArchive(
                f"has {extra} bytes after the end of its gzip stream that are not gzip data "
                "(appended to the file, or a damaged copy)"
            )
        rest = f.read(CHUNK)


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
    count = 0
    total_cap = (len(wanted) + 1) * cap + CHUNK
    with (
        gzip.open(archive, "rb") as gz,
        tarfile.open(fileobj=CappedReader(gz, total_cap), mode="r|") as tar,
    ):
        for info in tar:
            count += 1
            if count > MAX_ARCHIVE_MEMBERS:
                raise BadArchive(
                    f"holds more than {MAX_ARCHIVE_MEMBERS} members (upstream's holds 9): refused"
                )
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
