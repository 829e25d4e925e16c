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
import http.client
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
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

import appliedtorch.data.synthetic as synthetic
from appliedtorch.core.errors import DataError
from appliedtorch.core.utils import pid_alive, signals_held
from appliedtorch.data.loading import (
    CIFAR10_BATCHES,
    DEFAULT_SIZES,
    MD5SUMS,
    SOURCE_FILE,
    UPSTREAM,
    _brief,
    _check_name,
    _read_cifar10,
    _read_mnist,
)

log = logging.getLogger(__name__)

# ---- limits ------------------------------------------------------------------------------------
# A mirror is untrusted input: its MD5SUMS proves only that the files are the ones it meant to
# serve. Every file and every archive member is bounded before it is written or read in full.
# The bounds leave room for synthetic stand-ins of twice the upstream sizes (data.synthetic).
MAX_MEMBER_BYTES = {
    "mnist": 16 + 2 * 60000 * 784,  # train-images-idx3-ubyte with twice upstream's 60000 digits
    "cifar10": 2 * 10000 * 3200,  # a batch of twice upstream's 10000 rows (3072 bytes + name)
}
MAX_DOWNLOAD_BYTES = {  # compressed files: never larger than what they hold, plus headers
    "mnist": MAX_MEMBER_BYTES["mnist"] + (1 << 20),
    "cifar10": (len(CIFAR10_BATCHES) + 1) * MAX_MEMBER_BYTES["cifar10"] + (1 << 20),
}
MAX_MD5SUMS_BYTES = 64 << 10
MAX_BACKOFF_SECONDS = 8.0  # one wait between retries never exceeds this (data.retries <= 5)


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 10**6 else f"{n} bytes"


# ---- download ----------------------------------------------------------------------------------


def download(
    name: str,
    out_dir: str | os.PathLike,
    source: str = "upstream",
    *,
    timeout: float = 10.0,
    retries: int = 2,
    backoff: float = 0.5,
    file_timeout: float = 900.0,
    synthetic_seed: int = 0,
    synthetic_sizes: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Fetch (or generate) dataset `name` into `out_dir`, verified; return its source record.

    Everything is staged in a temporary directory beside `out_dir`, which replaces `out_dir`
    only once every file passed its checksum and the dataset loads; on any failure nothing is
    left behind and DataError says which file, which URL(s) and what to do. `timeout` bounds
    each network wait, `file_timeout` each file's whole transfer. Staging directories that a
    killed download left behind (their process is gone) are removed first.
    """
    _check_name(name)
    out = Path(out_dir)
    limits = _Limits(timeout, file_timeout, retries, backoff, name)
    try:
        created = _make_parents(out.parent)
        remove_stale_staging(out)
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
            fetched = _fetch_all(name, source, staging / ".archives", limits)
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


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove `.<name>.<pid>.*.tmp` / `.<name>.<pid>.old` beside `out` whose process is gone
    (a download killed by SIGKILL or a power cut); return what was removed."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.(?:[0-9a-f]+\.tmp|old)")
    removed = []
    with contextlib.suppress(OSError):
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if not m or int(m[1]) == os.getpid() or pid_alive(int(m[1])):
                continue
            if p.name.endswith(".old") and not out.exists():
                # Killed between moving the old dataset aside and the new one in: put it back.
                os.replace(p, out)
                log.info("restored %s from %s, left by a download that was killed", out, p)
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            log.info("removed %s, left by a download that was killed (pid %s)", p, m[1])
            removed.append(p)
    return removed


def _source_record(name: str, source: str, staging: Path, origin: dict[str, Any]) -> dict[str, Any]:
    """The dataset's source record, once the staged files load: where they came from (`origin`),
    sample counts, and every file's md5 and size."""
    try:
        data = _read_mnist(staging) if name == "mnist" else _read_cifar10(staging)
    except DataError as exc:
        # Name the file as it is in the archive, not by the staging path (gone by now).
        why = str(exc).replace(f"{staging}{os.sep}", "")
        raise DataError(f"{name} from {_brief(source, 80)} is not a valid dataset: {why}") from None
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
    """Rename `new` onto `out`; an existing `out` is moved aside first and removed after.

    SIGINT/SIGTERM are held back during the two renames, so a signal cannot leave `out`
    missing with the previous dataset only under its `.old` name.
    """
    old = None
    with signals_held():
        if out.exists():
            old = out.with_name(f".{out.name}.{os.getpid()}.old")
            os.replace(out, old)
        try:
            os.replace(new, out)
        except BaseException:
            if old is not None:
                os.replace(old, out)
            raise
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


@dataclass(frozen=True)
class _Limits:
    """How long and how much one download may take: per wait, per file, retries, sizes."""

    timeout: float  # seconds any one network wait may take
    file_timeout: float  # seconds one file's whole transfer may take (a trickling server)
    retries: int
    backoff: float
    dataset: str

    @property
    def max_bytes(self) -> int:
        return MAX_DOWNLOAD_BYTES[self.dataset]


def _fetch_all(name: str, source: str, dest: Path, limits: _Limits) -> list[_Fetched]:
    """Every file of the dataset from `source` into `dest`, each verified by md5."""
    upstream = UPSTREAM[name]
    dest.mkdir(parents=True)
    if source == "upstream":
        bases, sums, against = upstream.bases, {}, "upstream md5"
    else:
        bases = [_mirror_base(source)]
        sums = _read_md5sums(bases[0], dest, limits, name, source)
        against = "MD5SUMS" if sums else "upstream md5"
    fetched = []
    for fname, upstream_md5 in upstream.files:
        md5 = sums.get(fname, upstream_md5)
        checked = "MD5SUMS" if fname in sums else "upstream md5"
        tried = []
        for base in bases:
            url = _join(base, fname)
            try:
                _fetch_verified(url, dest / fname, md5, checked, limits)
            except _FetchError as exc:
                tried.append(f"{_brief(url, 200)} ({exc})")
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
            f"data.source '{_brief(source, 80)}' is not upstream, synthetic, an http(s):// URL or "
            "an existing directory; set data.source in params.yaml"
        )
    return str(path.resolve())


def _join(base: str, fname: str) -> str:
    return base + fname if base.startswith(("http://", "https://")) else str(Path(base) / fname)


def _read_md5sums(base: str, dest: Path, limits: _Limits, name: str, source: str) -> dict[str, str]:
    """The mirror's MD5SUMS (`<md5>  <file>` lines) as {file: md5}; {} when it has none."""
    url = _join(base, MD5SUMS)
    tmp = dest / MD5SUMS
    try:
        _fetch_with_retries(url, tmp, limits, MAX_MD5SUMS_BYTES, quiet=True)
    except _FetchError as exc:
        if exc.missing:
            log.info("%s has no %s: verifying against the upstream md5 sums", source, MD5SUMS)
            return {}
        raise DataError(
            f"cannot read {_brief(url, 200)} for {name} ({exc}); {_hint(name, source)}"
        ) from None
    sums = {}
    for number, line in enumerate(tmp.read_text(errors="replace").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        md5, _, fname = line.partition(" ")
        fname = fname.strip().lstrip("*").removeprefix("./")
        if len(md5) != 32 or not fname or any(c not in "0123456789abcdefABCDEF" for c in md5):
            raise DataError(
                f"{_brief(url, 200)} line {number} is not in md5sum format: {_brief(line.strip(), 60)!r}"
            )
        sums[Path(fname).name] = md5.lower()
    tmp.unlink()
    return sums


def _fetch_verified(url: str, dest: Path, md5: str, against: str, limits: _Limits) -> None:
    """Fetch to a temporary name; rename onto `dest` only once its md5 matches."""
    part = dest.with_name(dest.name + ".part")
    try:
        _fetch_with_retries(url, part, limits, limits.max_bytes)
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
    url: str, dest: Path, limits: _Limits, max_bytes: int, quiet: bool = False
) -> None:
    """_fetch once, and again up to `retries` times after transient errors, backing off 2x
    (each wait capped at MAX_BACKOFF_SECONDS)."""
    for attempt in range(limits.retries + 1):
        try:
            _fetch(url, dest, limits.timeout, quiet, max_bytes, limits.file_timeout)
            return
        except _FetchError as exc:
            if exc.permanent or attempt == limits.retries:
                raise
            delay = min(limits.backoff * 2**attempt, MAX_BACKOFF_SECONDS)
            log.warning(
                "%s: %s; retry %d/%d in %.1f s", url, exc, attempt + 1, limits.retries, delay
            )
            time.sleep(delay)


class _Deadline:
    """Shuts the sockets of one transfer down once its time is up: `timeout` bounds each wait
    on the socket, not a server that sends one byte a second for ever (headers included)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)

    def opener(self) -> urllib.request.OpenerDirector:
        """A urllib opener whose every connection (redirects too) this deadline watches."""
        deadline = self

        def watched(base: type[http.client.HTTPConnection]) -> type:
            class Watched(base):  # type: ignore[valid-type, misc]
                def connect(self) -> None:
                    super().connect()
                    deadline.watch(self.sock)

            return Watched

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> Any:
                return self.do_open(watched(http.client.HTTPConnection), req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> Any:
                kwargs = {"context": self._context}
                if hasattr(self, "_check_hostname"):  # Python < 3.12
                    kwargs["check_hostname"] = self._check_hostname
                return self.do_open(watched(http.client.HTTPSConnection), req, **kwargs)

        return urllib.request.build_opener(HTTP, HTTPS)


def _shutdown(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for an SSLSocket: wakes a thread blocked in recv().
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _progress_bar(url: str, total: int | None, quiet: bool) -> tqdm:
    """A byte progress bar for one download, shown only on a terminal (never when `quiet`)."""
    return tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc=Path(url).name,
        disable=True if quiet else None,  # None: only on a terminal
    )


def _http_error(exc: urllib.error.HTTPError) -> _FetchError:
    """An HTTP error answer as a fetch error: 4xx will not change on retry (408 and 429 might);
    5xx is the server's trouble and is retried."""
    permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
    reason = (
        "not found (HTTP 404)" if exc.code == 404 else f"HTTP {exc.code} {_brief(exc.reason, 60)}"
    )
    return _FetchError(reason, permanent=permanent, missing=exc.code in (404, 410))


def _fetch(
    url: str,
    dest: Path,
    timeout: float,
    quiet: bool = False,
    max_bytes: int = MAX_DOWNLOAD_BYTES["cifar10"],
    file_timeout: float = 900.0,
) -> None:
    """One attempt: copy a mirror file, or stream a URL (with a progress bar) into `dest`;
    at most `max_bytes`, within `file_timeout` seconds in all."""
    if not url.startswith(("http://", "https://")):
        _copy_local(url, dest, max_bytes)
        return
    # torchvision's download_url has no timeout (urlopen would wait forever on a stalled
    # server), no retries, and writes straight to the final name; hence this small loop.
    _resolve(url, timeout)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    too_big = f"larger than {_mb(max_bytes)}, the most this file can hold: refused"
    done = 0
    total = None
    with _Deadline(file_timeout) as deadline:
        try:
            with deadline.opener().open(request, timeout=timeout) as response:
                total = response.length
                if total is not None and total > max_bytes:
                    raise _FetchError(f"{total} bytes announced, {too_big}", permanent=True)
                with open(dest, "wb") as fh, _progress_bar(url, total, quiet) as bar:
                    while chunk := response.read(1 << 20):
                        done += len(chunk)
                        if done > max_bytes:
                            raise _FetchError(too_big, permanent=True)
                        fh.write(chunk)
                        bar.update(len(chunk))
        except _FetchError:
            raise
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except urllib.error.URLError as exc:
            if deadline.expired:
                raise _too_slow(file_timeout, done) from None
            raise _network_error(exc.reason, timeout) from None
        except (OSError, HTTPException) as exc:  # timeouts and resets while reading the body
            if deadline.expired:
                raise _too_slow(file_timeout, done) from None
            raise _network_error(exc, timeout) from None
    if deadline.expired:  # the shutdown may read as a clean end of the body
        raise _too_slow(file_timeout, done)
    if total is not None and done < total:
        raise _FetchError(f"connection closed after {done} of {total} bytes")


def _too_slow(seconds: float, done: int) -> _FetchError:
    # Not retried: a server this slow would only make the user wait (retries + 1) times longer.
    return _FetchError(
        f"not complete within {seconds:g} s (data.file_timeout; {done} bytes received)",
        permanent=True,
    )


def _copy_local(path: str, dest: Path, max_bytes: int) -> None:
    """Copy a directory mirror's file: a regular file (not a device or FIFO) of at most max_bytes."""
    try:
        with open(path, "rb") as src:
            info = os.fstat(src.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise _FetchError("not a regular file", permanent=True)
            if info.st_size > max_bytes:
                raise _FetchError(
                    f"{info.st_size} bytes, larger than {_mb(max_bytes)}, the most this file "
                    "can hold: refused",
                    permanent=True,
                )
            with open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except FileNotFoundError:
        raise _FetchError("no such file", missing=True) from None
    except OSError as exc:
        raise _FetchError(exc.strerror or str(exc), permanent=True) from None


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
    return _FetchError(_brief(text, 100))


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
    """Unpack the verified archives into torchvision's layout under `staging`, each member
    bounded by MAX_MEMBER_BYTES before it is written (a decompression bomb stops there)."""
    hint = _hint(name, source)
    cap = MAX_MEMBER_BYTES[name]
    if name == "mnist":
        folder = staging / "MNIST" / "raw"
        folder.mkdir(parents=True)
        for f in fetched:
            try:
                _gunzip(f.path, folder / f.name[:-3], cap)
            except _TooLarge as exc:
                raise DataError(f"{f.name} from {f.url} {exc}; {hint}") from None
            except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
                raise DataError(
                    f"{f.name} from {f.url} is not a valid gzip file ({_brief(exc)}); {hint}"
                ) from None
        return
    (archive,) = fetched
    try:
        _untar_cifar10(archive.path, staging / synthetic.CIFAR10_FOLDER, cap)
    except _TooLarge as exc:
        raise DataError(f"{archive.name} from {archive.url} {exc}; {hint}") from None
    except _BadArchive as exc:
        raise DataError(f"{archive.name} from {archive.url}: {exc}; {hint}") from None
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(
            f"{archive.name} from {archive.url} is not a valid tar.gz ({_brief(exc)}); {hint}"
        ) from None


class _TooLarge(Exception):
    """An archive member inflates past what the dataset can hold."""


class _BadArchive(Exception):
    """An archive lacks a member, or holds one that is not a plain file."""


def _bomb(what: str, cap: int) -> _TooLarge:
    return _TooLarge(
        f"{what} past {_mb(cap)}, more than any file of the dataset holds: refused "
        "(a decompression bomb or not this dataset)"
    )


def _gunzip(src: Path, dst: Path, cap: int) -> None:
    """Decompress `src` to `dst`, stopping as soon as the output would pass `cap` bytes."""
    with open(src, "rb") as f:  # gzip's trailer states the size (mod 2^32): a cheap first look
        f.seek(0, os.SEEK_END)
        if f.tell() >= 18:
            f.seek(-4, os.SEEK_END)
            if int.from_bytes(f.read(4), "little") > cap:
                raise _bomb("says it inflates", cap)
    done = 0
    with gzip.open(src, "rb") as gz, open(dst, "wb") as out:
        while chunk := gz.read(1 << 20):
            done += len(chunk)
            if done > cap:
                raise _bomb("inflates", cap)
            out.write(chunk)


class _CappedReader:
    """A file's read() that raises _TooLarge once more than `cap` bytes were read in all."""

    def __init__(self, f: Any, cap: int):
        self._f, self._cap, self._done = f, cap, 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n if 0 <= n <= 1 << 20 else 1 << 20)
        self._done += len(data)
        if self._done > self._cap:
            raise _bomb("inflates", self._cap)
        return data


def _untar_cifar10(archive: Path, folder: Path, cap: int) -> None:
    """The known members of cifar-10-batches-py/ as plain files into `folder`.

    The tar is streamed: each member's size is checked from its header before its data is
    read, the whole stream is capped, and nothing but the known names is written anywhere.
    """
    folder.mkdir(parents=True)
    wanted = {f"{synthetic.CIFAR10_FOLDER}/{m}": m for m in [*CIFAR10_BATCHES, "readme.html"]}
    seen: set[str] = set()
    total_cap = (len(wanted) + 1) * cap + (1 << 20)
    with (
        gzip.open(archive, "rb") as gz,
        tarfile.open(fileobj=_CappedReader(gz, total_cap), mode="r|") as tar,
    ):
        for info in tar:
            if info.size > cap:
                raise _bomb(f"holds {_brief(info.name, 60)} of {info.size} bytes,", cap)
            member = wanted.get(info.name.removeprefix("./"))
            if member is None:
                continue
            if member in seen:
                raise _BadArchive(f"{info.name} appears twice")
            src = tar.extractfile(info) if info.isfile() else None
            if src is None:
                raise _BadArchive(f"{info.name} is not a regular file")
            with src, open(folder / member, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            seen.add(member)
    missing = [m for m in CIFAR10_BATCHES if m not in seen]
    if missing:
        raise _BadArchive(f"lacks {synthetic.CIFAR10_FOLDER}/{missing[0]}")
