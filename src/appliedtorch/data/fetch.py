"""Download + verify: where MNIST and CIFAR-10 come from and how they reach data/raw/<name>.

    python stages/download.py --params params.yaml --dataset mnist --out data/raw/mnist

Sources (`data.source`): `upstream` (torchvision's URLs and md5 sums, MNIST's mirrors in order),
a mirror (a directory or an http(s):// base URL with the upstream file names, verified against
its `MD5SUMS` file when it has one, else against the upstream sums), or `synthetic` (generated,
see `appliedtorch.data.synthetic`). The files land in torchvision's on-disk layout, with
`source.json` saying where they came from (see `appliedtorch.data.loading`).
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import logging
import os
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

from torchvision.datasets.utils import USER_AGENT, calculate_md5
from tqdm import tqdm

from appliedtorch.core.errors import DataError
from appliedtorch.data import synthetic
from appliedtorch.data.loading import (
    CIFAR10_BATCHES,
    DEFAULT_SIZES,
    MD5SUMS,
    SOURCE_FILE,
    UPSTREAM,
    _check_name,
    _read_cifar10,
    _read_mnist,
)

log = logging.getLogger(__name__)

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
        record = _source_record(name, source, staging, record)
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


def _source_record(name: str, source: str, staging: Path, origin: dict[str, Any]) -> dict[str, Any]:
    """The dataset's source record, once the staged files load: where they came from (`origin`),
    sample counts, and every file's md5 and size."""
    try:
        data = _read_mnist(staging) if name == "mnist" else _read_cifar10(staging)
    except DataError as exc:
        raise DataError(f"{name} from {source} is not a valid dataset: {exc}") from None
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "dataset": name,
        "source": source,
        **origin,
        "train": len(data["train_labels"]),
        "test": len(data["test_labels"]),
        "files": {
            p.relative_to(staging).as_posix(): {"md5": calculate_md5(p), "bytes": p.stat().st_size}
            for p in files
        },
    }


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
