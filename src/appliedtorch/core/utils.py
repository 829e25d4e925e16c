"""Small shared helpers: seeding, devices, thread counts, atomic file output, flat keys, hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
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


def json_md5(obj: Any) -> str:
    """md5 of `obj` as canonical JSON (sorted keys; anything else as its str): a stable hash."""
    return hashlib.md5(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise AppliedTorchError(f"cannot write {path}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give outputs the usual permissions (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    tmp_path.chmod(0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
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
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        torch.save(obj, f)


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
