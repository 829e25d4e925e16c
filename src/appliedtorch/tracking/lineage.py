"""Tags that tie an MLflow run to its code, data and experiment: git, DVC, sweep, data hashes.

    >>> lineage_tags("train_mlp", repo_root())
    {'dvc.stage': 'train_mlp', 'git.commit': '9f3c...', 'git.dirty': 'false'}
    >>> data_tags("mnist", "data/raw/mnist", "synthetic")
    {'data.mnist.md5': '5d41...dir', 'data.source': 'synthetic'}

Plain Python: nothing here talks to MLflow, so these are testable without a tracking store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliedtorch.core.utils import file_md5, json_md5

# Dataset inputs: each dataset a run's tags name (`data.<name>.md5`) is logged as two splits.
SPLITS = (("train", "training"), ("test", "testing"))

# `<sweep>.<variant>`, the variant a params key's name (lowercase, not a number: `lr-0.01` is
# no variant `01`).
VARIANT = re.compile(r"(.+)\.([a-z_][a-z0-9_]*)")


def git_output(root: Path, *args: str) -> str | None:
    """`git <args>`'s stripped output in `root`; None when git is missing or fails."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def lineage_tags(stage: str, root: Path) -> dict[str, str]:
    """Tags that tie a run to its code: git commit and dirtiness, DVC stage and experiment."""
    tags = {"dvc.stage": stage}
    commit = git_output(root, "rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        status = git_output(root, "status", "--porcelain", "--untracked-files=no")
        tags["git.dirty"] = str(bool(status)).lower()
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if sweep := sweep_name(os.environ.get("DVC_EXP_NAME")):
        tags["sweep"] = sweep
    if variant := variant_name(os.environ.get("DVC_EXP_NAME")):
        tags["variant"] = variant
    return tags


def sweep_name(exp_name: str | None) -> str | None:
    """The sweep a queued experiment belongs to: `lr-grid` for `lr-grid-2` or for
    `lr-grid.recipe` (`python -m appliedtorch.recipes compare`), else None.

    `dvc exp run --queue -n lr-grid -S 'mlp.lr=choice(...)'` names the grid's experiments
    `lr-grid-1`, `lr-grid-2`, ... (DVC refuses a name already used on the same baseline), so the
    prefix names exactly that batch. DVC passes nothing else that tells one batch from another:
    a grid queued without `-n` gets random names and no sweep tag (and a lone experiment named
    like `model-2` is tagged `sweep=model`).
    """
    match = re.fullmatch(r"(.+)-(\d+)", exp_name or "")
    if match:
        return match.group(1)
    match = VARIANT.fullmatch(exp_name or "")
    return match.group(1) if match else None


def variant_name(exp_name: str | None) -> str | None:
    """The variant of a comparison sweep: `recipe` for `cnn-fast-cmp.recipe`, else None."""
    match = VARIANT.fullmatch(exp_name or "")
    return match.group(2) if match else None


def dvc_md5(path: str | os.PathLike, known: Mapping[str, str] | None = None) -> str:
    """The hash DVC records in dvc.lock for `path`: a file's md5, or a directory's `<md5>.dir`.

    A directory's hash is the md5 of the JSON list of {"md5", "relpath"} entries sorted by
    relpath, as dvc-data computes it, so a run's tag can be matched against dvc.lock. `known`
    holds md5s already computed ({relpath: md5}, e.g. by the dataset's check on loading).
    """
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    known = known or {}
    entries = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            rel = f.relative_to(path).as_posix()
            entries.append({"md5": known.get(rel) or file_md5(f), "relpath": rel})
    entries.sort(key=lambda e: e["relpath"])
    blob = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(blob).hexdigest() + ".dir"


def data_tags(
    name: str, path: str | os.PathLike, source: str, known: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Tags naming the exact data a run read: `data.<name>.md5` (DVC's hash) and `data.source`;
    `known` as in `dvc_md5`."""
    return {f"data.{name}.md5": dvc_md5(path, known), "data.source": source}


def data_hash(tags: Mapping[str, str]) -> str:
    """The first `data.<name>.md5` value among a run's tags, or ''."""
    return next((v for k, v in tags.items() if k.startswith("data.") and k.endswith(".md5")), "")


def dataset_inputs(tags: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(name, digest, source, context) of every split a run read, from its `data.*` tags:
    `("mnist-train", <DVC md5 of data/raw/mnist>, "synthetic", "training")`, ..."""
    source = str(tags.get("data.source", ""))
    out = []
    for key, md5 in tags.items():
        match = re.fullmatch(r"data\.(.+)\.md5", key)
        if match:
            out += [(f"{match.group(1)}-{split}", str(md5), source, ctx) for split, ctx in SPLITS]
    return out


def params_md5(params: Mapping[str, Any]) -> str:
    """A stable hash of the params a run used (canonical JSON)."""
    return json_md5(dict(params))
