"""What a recipe comparison will run before it is queued: whose `seeds` it takes, the names it
would take over, and what the runs cost.

    python -m appliedtorch.recipes compare recipes/cnn-fast.yaml --seeds 5 --dry-run

`seeds` is how many members each variant trains, not a change to compare: the recipe's
`<section>.seeds` applies to every variant (the baseline too), `-S <section>.seeds=N` wins over
it, and `--seeds N` over both; when two disagree, one warning line says which won. The cost is
runs x epochs x seconds per epoch, the last as measured by the last run in this workspace
(`mean_epoch_seconds` in reports/<section>/details.json) where there is one.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_METRICS_BYTES = 1 << 20  # a metrics.json is a few KB; it is input like any file
LONG_SECONDS = 3600.0  # a comparison longer than this is worth a warning before it is queued


def seeds_for_every_variant(
    recipe: Mapping[str, Any],
    sets: Mapping[str, Any],
    seeds: int | None,
    sections: list[str],
    recipe_name: str,
) -> tuple[dict[str, Any], list[tuple[int, str]]]:
    """({<section>.seeds: N} to set on every variant, [(log level, line)] saying where each N
    comes from and what it won over)."""
    out: dict[str, Any] = {}
    lines = []
    for section in sections:
        key = f"{section}.seeds"
        offers = []  # lowest precedence first
        if key in recipe:
            offers.append((f"{key}: {recipe[key]} in {recipe_name}", recipe[key]))
        if key in sets:
            offers.append((f"-S {key}={sets[key]}", sets[key]))
        if seeds is not None:
            offers.append((f"--seeds {seeds}", seeds))
        if not offers:
            continue
        winner, value = offers[-1]
        out[key] = value
        losers = [source for source, v in offers[:-1] if v != value]
        if losers:
            line = (
                f"{winner} wins over {' and '.join(losers)}: each variant trains {value} member(s)"
            )
            lines.append((logging.WARNING, line))
        else:
            lines.append((logging.INFO, f"{key}: {value} member(s) per variant, from {winner}"))
    return out, lines


def epoch_seconds(root: Path, section: str) -> float | None:
    """Seconds per epoch the last `section` run in this workspace measured, if it is readable
    (details.json: the numbers beside metrics.json's headline)."""
    path = root / "reports" / section / "details.json"
    try:
        with open(path, "rb") as f:
            metrics = json.loads(f.read(MAX_METRICS_BYTES + 1))
        value = metrics["mean_epoch_seconds"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    ok = type(value) in (int, float) and math.isfinite(value) and 0 < value < 1e6
    return float(value) if ok else None


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:,.1f} h"


def cost_lines(runs: list[tuple[str, int, int]], root: Path) -> list[tuple[int, str]]:
    """[(log level, line)] per section: variants, training runs (members), epochs in all, and
    the time that takes at the measured seconds per epoch. `runs`: (section, members, epochs)
    of each variant's section."""
    lines = []
    for section in dict.fromkeys(s for s, _, _ in runs):
        mine = [(m, e) for s, m, e in runs if s == section]
        members = sum(m for m, _ in mine)
        epochs = sum(m * e for m, e in mine)
        text = (
            f"cost of {section}: {len(mine)} variants, {members} training runs, {epochs:,} "
            "epochs in all"
        )
        per_epoch = epoch_seconds(root, section)
        if per_epoch is None:
            unknown = f"no reports/{section}/metrics.json here yet to time an epoch by"
            lines.append((logging.INFO, f"{text} ({unknown})"))
            continue
        total = epochs * per_epoch
        level = logging.WARNING if total > LONG_SECONDS else logging.INFO
        lines.append(
            (
                level,
                f"{text}: ~{_duration(total)} at {per_epoch:.3g} s per epoch (the last "
                f"{section} run here)",
            )
        )
    return lines


def existing_experiments(timeout: float = 60.0) -> tuple[set[str] | None, str]:
    """(names of the experiments of the last commit, "") from `dvc exp list`, or (None, why)."""
    try:
        proc = subprocess.run(
            ["dvc", "exp", "list", "--name-only"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)[:100]
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        return None, lines[-1][:150] if lines else f"exit code {proc.returncode}"
    return {ln.strip() for ln in proc.stdout.splitlines() if ln.strip()}, ""
