"""What a failed download tells the user to do next, for the state their workspace is in.

    >>> next_step(dataset("mnist"), "upstream")
    'set data.source in params.yaml to synthetic (generated stand-ins) or a mirror ...'

`dvc pull` is offered only where it can work: a DVC remote is configured and dvc.lock records
the dataset (in a fresh clone DVC would answer "Everything is up to date." and fetch nothing).
Reading DVC's config is local and cheap; no network.
"""

from __future__ import annotations

import logging
from pathlib import Path

from appliedtorch.data.datasets import Dataset

log = logging.getLogger(__name__)
MIRROR = "a mirror (a directory or http(s):// URL with the upstream file names)"


def dvc_root(start: Path | None = None) -> Path | None:
    """The nearest directory at or above `start` (the working directory) holding `.dvc/`."""
    here = (start or Path.cwd()).resolve()
    return next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), None)


def can_pull(name: str, start: Path | None = None) -> bool:
    """True when `dvc pull` could bring data/raw/<name>: a remote is configured (any level of
    DVC's config, as `dvc remote list` shows) and dvc.lock records the output."""
    root = dvc_root(start)
    if root is None:
        return False
    lock = root / "dvc.lock"
    try:
        if f"path: data/raw/{name}\n" not in lock.read_text(errors="replace"):
            return False
        from dvc.config import Config  # DVC's own reader: the config's levels and syntax

        return bool(Config(dvc_dir=str(root / ".dvc"))["remote"])
    except Exception as exc:  # noqa: BLE001 - a hint must never hide the error it belongs to
        log.debug("no dvc pull hint: %s", exc)
        return False


def next_step(ds: Dataset, source: str, start: Path | None = None) -> str:
    """The exact next thing to try after `ds` could not be fetched from `source`."""
    if source == "upstream":
        step = f"set data.source in params.yaml to synthetic (generated stand-ins) or {MIRROR}"
        if ds.os_package and not ds.os_dir.is_dir():
            step += f", or install {ds.os_package} (`sudo apt-get install {ds.os_package}`)"
    else:
        step = "set data.source in params.yaml to upstream, another mirror or synthetic"
    if can_pull(ds.name, start):
        step += f", or get data/raw/{ds.name} with `dvc pull`"
    return step
