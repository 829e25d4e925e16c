"""Bounds on what a source may send, the limits of one download, and short printable text.

    python stages/download.py --params params.yaml --dataset mnist --out data/raw/mnist

A mirror is untrusted input: its MD5SUMS proves only that the files are the ones it meant to
serve. Every file, archive member, pickle and IDX header is bounded here before it is written or
read in full. The bounds leave room for synthetic stand-ins of twice the upstream sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliedtorch.data.datasets import CIFAR10_BATCHES
from appliedtorch.data.params import DataParams

MAX_ROWS = {"idx": 2 * 60000, "cifar": 2 * 10000}  # images one file may hold
MAX_MEMBER_BYTES = {  # one extracted file
    "idx": 16 + MAX_ROWS["idx"] * 784,  # train-images-idx3-ubyte with twice upstream's digits
    "cifar": MAX_ROWS["cifar"] * 3200,  # a batch of twice upstream's rows (3072 bytes + name)
}
MAX_DOWNLOAD_BYTES = {  # compressed files: never larger than what they hold, plus headers
    "idx": MAX_MEMBER_BYTES["idx"] + (1 << 20),
    "cifar": (len(CIFAR10_BATCHES) + 1) * MAX_MEMBER_BYTES["cifar"] + (1 << 20),
}
MAX_MD5SUMS_BYTES = 64 << 10
# Upstream's cifar-10-python.tar.gz holds 9 entries (the folder, 7 files, readme.html); a tar of
# a million empty members is tiny yet costs a minute and hundreds of MB to list.
MAX_ARCHIVE_MEMBERS = 64
MAX_BACKOFF_SECONDS = 8.0  # one wait between retries never exceeds this (data.retries <= 5)
# A CIFAR-10 batch pickle: one opcode per label and per file name plus a few dozen for the dict
# and the array, so the op count is bounded by the rows; a handful of nested marks at most.
MAX_PICKLE_OPS = 4 * MAX_ROWS["cifar"] + 1000
MAX_PICKLE_MARKS = 8
MAX_PICKLE_STACK = MAX_ROWS["cifar"] + 64
CHUNK = 1 << 20  # bytes read or written at a time: memory stays flat whatever the file's size


_DEFAULT = DataParams()  # the defaults live with the params section, once


@dataclass(frozen=True)
class Limits:
    """How long and how much one download may take: per wait, per file, speed, retries."""

    timeout: float = _DEFAULT.timeout  # seconds any one network wait may take
    file_timeout: float = _DEFAULT.file_timeout  # seconds for one file's whole transfer: a backstop
    retries: int = _DEFAULT.retries
    backoff: float = 0.5  # seconds before the first retry; doubled for each next one
    low_speed_limit: float = _DEFAULT.low_speed_limit  # bytes/s: slower than this for ...
    low_speed_time: float = _DEFAULT.low_speed_time  # ... this many seconds stops the transfer

    @classmethod
    def from_params(cls, data: DataParams) -> Limits:
        """The limits params.yaml's `data` section sets."""
        return cls(
            timeout=data.timeout,
            file_timeout=data.file_timeout,
            retries=data.retries,
            low_speed_limit=data.low_speed_limit,
            low_speed_time=data.low_speed_time,
        )


def mb(n: int) -> str:
    """A byte count as people read it."""
    return f"{n / 1e6:.0f} MB" if n >= 10**6 else f"{n} bytes"


def brief(exc: BaseException | str, limit: int = 100) -> str:
    """An exception as short printable text: a damaged file's bytes can end up in its message."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in str(exc)[: limit * 4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def too_large(what: str, cap: int) -> str:
    """The refusal of a file or member past the most the dataset can hold."""
    return (
        f"{what} past {mb(cap)}, more than any file of the dataset holds: refused "
        "(a decompression bomb or not this dataset)"
    )


def redo(name: str) -> str:
    """What to do when data/raw/<name> is missing or damaged."""
    return f"run {download_command(name)} (or `dvc pull` from the team remote)"


def download_command(name: str, start: Path | None = None) -> str:
    """The command that brings data/raw/<name> into the workspace at or above `start` (the
    working directory): `dvc repro download@<name>`, or, where no classifier section names the
    dataset (its download stage then fetches nothing), the `-S` that names it."""
    if name in (named_datasets(start) or {name}):
        return f"`dvc repro download@{name}`"
    return (
        f"`dvc exp run -S mlp.dataset={name} download@{name}` (download@{name} fetches it only "
        "while mlp.dataset or cnn.dataset names it)"
    )


def named_datasets(start: Path | None = None) -> set[str] | None:
    """The datasets params.yaml names in `mlp.dataset` and `cnn.dataset`, in the DVC project at
    or above `start`; None where there is no project or no params.yaml to read."""
    here = (start or Path.cwd()).resolve()
    root = next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), None)
    if root is None:
        return None
    try:
        import yaml

        params = yaml.safe_load((root / "params.yaml").read_text(errors="replace"))
        sections = [params.get(s) for s in ("mlp", "cnn")]
        return {str(s["dataset"]) for s in sections if isinstance(s, dict) and "dataset" in s}
    except Exception:  # noqa: BLE001 - a hint must never hide the error it belongs to
        return None
