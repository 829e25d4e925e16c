"""Small shared helpers: seeding, devices, thread counts, atomic file output, flat keys, hashes.

A stage's outputs are written as one set (`output_set`): every file into a hidden staging
directory, then all moved into place together, so a failure at any point leaves the previous
set whole:

    with output_set(args.model.parent, args.reports) as out:
        save_torch(state, out.path(args.model))
        write_json(out.path(args.reports / "metrics.json"), metrics)
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import random
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliedtorch.core.errors import AppliedTorchError

if TYPE_CHECKING:
    import torch

# numpy and torch are imported inside the functions that use them: params and tracking import
# this module and stay quick to import (a stage that fails on its params fails in a blink).


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch (CPU and every CUDA device)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds code that uses the global state
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """Turn the `device` param (auto | cpu | cuda | cuda:N) into a torch.device, checking it exists."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AppliedTorchError(
                f"device '{name}' was asked for but no CUDA GPU is available; "
                "set device: auto or device: cpu in params.yaml"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AppliedTorchError(
                f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA device(s) found)"
            )
    return device


# Errors that mean "this place cannot take the file": reported as one line naming the path.
WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_error(path: str | os.PathLike, exc: OSError) -> AppliedTorchError:
    """`cannot write <path>: No space left on device`, naming where the file was going."""
    return AppliedTorchError(f"cannot write {_destination(Path(path))}: {exc.strerror or exc}")


@contextlib.contextmanager
def thread_count(n: int | None) -> Iterator[None]:
    """Use n intra-op CPU threads inside the block (None or 0: leave torch's setting alone)."""
    if not n:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings with dotted keys: flatten({"a": {"b": 1}}, "x") == {"x.a.b": 1}."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out |= flatten(value, name)
        else:
            out[name] = value
    return out


def file_md5(path: str | os.PathLike) -> str:
    """md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def json_md5(obj: Any) -> str:
    """md5 of `obj` as canonical JSON (sorted keys; anything else as its str): a stable hash."""
    return hashlib.md5(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """At most `limit` + 1 bytes of the regular file `path` (the caller refuses more). A FIFO,
    socket or device is an OSError at once: opening a FIFO for reading waits for a writer, for
    ever, so it is opened without blocking and checked before anything is read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, "a directory, not a file")
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "not a regular file: a FIFO, device or socket")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit + 1)
    finally:
        os.close(fd)


def is_regular(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file (not a FIFO, socket or device that could block a read)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def error_digits(error: float) -> float:
    """-log10 of an error: the number of correct decimal digits (2.5e-9 -> 8.6), which no
    table rounds to 0.0. An exact answer reads as 300, not infinity, which JSON cannot hold."""
    return -math.log10(max(error, 1e-300))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty).

    SQLAlchemy's remark "(raised as a result of Query-invoked autoflush; ...)" is skipped: the
    database's own message follows it.
    """
    lines = [
        line.strip()
        for line in str(exc).splitlines()
        if line.strip() and not line.lstrip().startswith("(raised as a result of")
    ]
    return lines[0] if lines else type(exc).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A full disk, a read-only filesystem or a permission error, while the block writes or at
    the rename, becomes one AppliedTorchError naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        # mkstemp creates 0600 files; give outputs the usual permissions (0666 less the umask).
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno in WRITE_ERRORS:
            raise write_error(path, exc) from None
        raise
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically; equal objects give byte-identical files."""
    import torch

    # A file object, not the path: given a path, torch names the zip archive's root folder after
    # the file, and the temporary name is random, so two saves of equal tensors differed.
    # Serialised in memory first: torch's zip writer turns a full disk into "unexpected pos";
    # a plain write raises OSError(ENOSPC), which atomic_path reports naming the file.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def check_writable(*dirs: str | os.PathLike) -> None:
    """Fail before any work if files cannot be written into each of `dirs` (created later).

    The nearest existing ancestor must be a directory this process may write to. A parent that
    is a regular file stops root as well as anyone (chmod does not stop root).
    """
    for d in map(Path, dirs):
        existing = next((p for p in (d, *d.parents) if p.exists()), None)
        if existing is None:
            continue
        if not existing.is_dir():
            raise AppliedTorchError(
                f"cannot write {d}: {existing} is a file, not a directory; "
                "move it away or pass another output path"
            )
        if not os.access(existing, os.W_OK | os.X_OK):
            raise AppliedTorchError(
                f"cannot write {d}: no write permission on {existing}; "
                "fix its permissions or pass another output path"
            )


# ---- output sets ---------------------------------------------------------------------------

_STAGING = re.compile(r"\.outputs\.(\d+)\.tmp")
_active: dict[Path, Path] = {}  # staging directory -> the directory its files go to


def _destination(path: Path) -> Path:
    """Where a staged or temporary file goes (for messages); other paths unchanged."""
    if _STAGING.fullmatch(path.name):
        return path.parent
    while m := re.fullmatch(r"\.(.+)\.[^.]+\.tmp", path.name):  # atomic_path's (nested) temp
        path = path.with_name(m[1])
    for staging, dest in _active.items():
        if path == staging or staging in path.parents:
            return dest / path.relative_to(staging)
    return path


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Delay SIGINT and SIGTERM until the block ends, then deliver them (main thread; else a
    no-op). The handlers are swapped rather than the signal mask set: a mask covers only the
    thread that sets it, and a process-directed signal reaches any thread that does not mask it
    (MLflow's system-metrics sampler, tqdm's monitor), whose handler flag Python then acts on in
    the main thread regardless of its mask."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def defer(signum: int, frame: Any) -> None:
        pending.append(signum)

    held = (signal.SIGINT, signal.SIGTERM)
    before = {s: signal.signal(s, defer) for s in held}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)  # now handled as usual: Terminated, KeyboardInterrupt, ...


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


class OutputSet:
    """Staging paths for one stage's outputs; see `output_set`."""

    def __init__(self, dirs: list[Path]):
        self.dirs = dirs
        self.staging = {d: d / f".outputs.{os.getpid()}.tmp" for d in dirs}

    def path(self, dest: str | os.PathLike) -> Path:
        """The staging path for `dest` (a file or directory at or under one of the set's
        directories, the deepest that holds it)."""
        dest = Path(dest)
        for d in sorted(self.dirs, key=lambda d: len(d.parts), reverse=True):
            if dest == d or d in dest.parents:
                return self.staging[d] / dest.relative_to(d)
        raise ValueError(f"{dest} is not under any of {[str(d) for d in self.dirs]}")

    def _files(self) -> list[tuple[Path, Path, Path]]:
        """(staging directory, staged file, destination) for every file written, in order."""
        return [
            (s, f, d / f.relative_to(s))
            for d, s in self.staging.items()
            for f in sorted(s.rglob("*"))
            if f.is_file()
        ]

    def commit(self) -> None:
        """Flush every staged file and keep a hard link to each file it replaces; then rename
        all into place with SIGINT/SIGTERM held, putting the previous set back if one fails."""
        moves = self._files()
        backups: dict[Path, Path] = {}
        for n, (staging, staged, dest) in enumerate(moves):
            try:
                _fsync(staged)  # a full disk can first show here (delayed allocation)
                if dest.exists():
                    backups[dest] = staging / f".previous.{n}"
                    _link_or_copy(dest, backups[dest])
                dest.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise write_error(dest, exc) from None
        done: list[Path] = []
        with signals_held():
            try:
                for _, staged, dest in moves:
                    os.replace(staged, dest)
                    done.append(dest)
            except BaseException as exc:
                for dest in reversed(done):  # renames within one directory: these succeed
                    with contextlib.suppress(OSError):
                        if dest in backups:
                            os.replace(backups[dest], dest)
                        else:
                            dest.unlink()
                if isinstance(exc, OSError):
                    raise write_error(moves[len(done)][2], exc) from None
                raise
        for d in {dest.parent for _, _, dest in moves}:
            with contextlib.suppress(OSError):
                _fsync(d)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        shutil.copy2(src, dst)  # a filesystem without hard links


@contextlib.contextmanager
def output_set(*dirs: str | os.PathLike) -> Iterator[OutputSet]:
    """Write a stage's outputs as one set: `out.path(dest)` names where to write each file
    (a hidden `.outputs.<pid>.tmp/` inside its destination directory, so renames stay on one
    filesystem); when the block succeeds every file is moved into place together, else the
    staging is removed and the previous files stay as they were.

    Staging left by a killed process is removed first. A full disk, read-only filesystem or
    permission error becomes one AppliedTorchError naming the destination file.
    """
    paths = list(dict.fromkeys(Path(d) for d in dirs))
    created: list[Path] = []
    out = OutputSet(paths)
    try:
        for d in paths:
            created += [p for p in (d, *d.parents) if not p.exists()][::-1]
            d.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(d)
            out.staging[d].mkdir()
            _active[out.staging[d]] = d
        yield out
        out.commit()
    except OSError as exc:
        if exc.errno in WRITE_ERRORS:
            raise write_error(Path(exc.filename) if exc.filename else paths[0], exc) from None
        raise
    finally:
        for s in out.staging.values():
            _active.pop(s, None)
            shutil.rmtree(s, ignore_errors=True)
        for d in reversed(created):  # directories made for a set that never arrived
            with contextlib.suppress(OSError):
                d.rmdir()


def _remove_stale_staging(directory: Path) -> None:
    """Remove `.outputs.<pid>.tmp/` left in `directory` by a process that no longer runs."""
    for p in directory.iterdir():
        m = _STAGING.fullmatch(p.name)
        if m and int(m[1]) != os.getpid() and not pid_alive(int(m[1])):
            shutil.rmtree(p, ignore_errors=True)
