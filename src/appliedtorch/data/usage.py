"""Which known datasets the classifiers train on, as small files DVC can depend on, so that no
params value ever becomes a path or a word of a command in dvc.yaml.

    python stages/datasets.py --params params.yaml --used data/used        # data/used/<dataset>
    python stages/datasets.py --params params.yaml --section mlp --out data/picked/mlp.json

Three layers keep `dvc repro` exact with a fixed list of download stages:

1. `datasets` writes `data/used/<dataset>` ("used" or "unused") for every dataset in the table,
   from `mlp.dataset` and `cnn.dataset`: a section switching datasets changes only the files of
   the datasets it left and joined, so only those downloads run again.
2. `download@<dataset>` (one stage per table entry) fetches a used dataset; an unused one leaves
   only a marker `source.json`.
3. `data@<section>` copies its dataset's `source.json` (file names, md5 sums, where from) into
   `data/picked/<section>.json`: it changes only when that section's data does, so a dataset
   switch in one section never retrains the other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from appliedtorch.core.errors import DataError
from appliedtorch.core.utils import write_json
from appliedtorch.data.datasets import DATASETS
from appliedtorch.data.limits import redo

USED, UNUSED = "used", "unused"
SOURCE_FILE = "source.json"


def usage(in_use: Iterable[str]) -> dict[str, str]:
    """{dataset: 'used' or 'unused'} for every known dataset."""
    in_use = set(in_use)
    return {name: USED if name in in_use else UNUSED for name in DATASETS}


def is_used(path: str | os.PathLike) -> bool:
    """What a `data/used/<dataset>` file says (DataError when it says neither)."""
    try:
        word = Path(path).read_text(encoding="ascii", errors="strict").strip()
    except (OSError, UnicodeError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run `dvc repro datasets`") from None
    if word not in (USED, UNUSED):
        raise DataError(f"{path}: says neither '{USED}' nor '{UNUSED}'; run `dvc repro datasets`")
    return word == USED


def unused_record(name: str) -> dict[str, Any]:
    """The `source.json` of a dataset no section trains on: nothing downloaded."""
    return {"dataset": name, "used": False, "files": {}}


def picked_record(name: str, root: str | os.PathLike) -> dict[str, Any]:
    """`data/picked/<section>.json`: the dataset's name and its `source.json`."""
    path = Path(root) / SOURCE_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); {redo(name)}") from None
    if not isinstance(record, dict) or record.get("used") is False:
        raise DataError(f"{path}: {name} was not downloaded; {redo(name)}")
    return {"dataset": name, "source": record}


def write_picked(out: str | os.PathLike, name: str, root: str | os.PathLike) -> None:
    """Write `picked_record` to `out`."""
    write_json(Path(out), picked_record(name, root))
