"""A sweep's grid: variants (sets of `-S` overrides) × seeds, one DVC experiment per point.

    >>> points = grid("lr", {"baseline": {}, "fast": {"mlp.lr": 0.01}}, [42, 43], ["train_mlp"])
    >>> [p.name for p in points]
    ['lr-baseline-s42', 'lr-baseline-s43', 'lr-fast-s42', 'lr-fast-s43']

Variants come from `--variant NAME KEY=VALUE ...`, from `--grid KEY=V1,V2` (every combination)
and from a recipe (`recipes.variants`: baseline, recipe, each change alone). `baseline` (no
change) is always one of them: Welch's test compares every other variant with it.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliedtorch.core.errors import ParamsError
from appliedtorch.core.params import read_yaml, short
from appliedtorch.recipes import STAGES, check_exp_name, parse_sets, read_recipe, variants

SECTIONS = {stage: section for section, stage in STAGES.items()}  # train_mlp -> mlp
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")  # a sweep's or a variant's name ('-' joins them)
MAX_POINTS = 1000


@dataclass(frozen=True)
class Point:
    """One grid point: a variant at a seed, trained as DVC experiment `name`."""

    sweep: str
    variant: str
    seed: int
    sets: tuple[str, ...]  # `-S key=value` items, the seed's included
    stages: tuple[str, ...]

    @property
    def name(self) -> str:
        """`<sweep>-<variant>-s<seed>`."""
        return f"{self.sweep}-{self.variant}-s{self.seed}"


def as_set(key: str, value: Any) -> str:
    """`key=value` as `dvc exp run -S` writes it back to YAML (true/false/null, numbers as is)."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"


def check_name(name: str, what: str) -> str:
    """`name` when it is a valid sweep or variant name; ParamsError naming it otherwise."""
    if not NAME.fullmatch(name) or len(name) > 60:
        raise ParamsError(
            f"{what} {short(name)}: letters, digits, '_' and '.', at most 60 characters"
        )
    return name


def variant_table(
    named: list[list[str]], grids: list[str], recipe: Path | None, params: Path
) -> dict[str, dict[str, Any]]:
    """{variant: {dotted key: value}} from the command line: `baseline` first, then each
    `--variant NAME KEY=VALUE...`, each combination of `--grid KEY=V1,V2`, and a recipe's."""
    table: dict[str, dict[str, Any]] = {"baseline": {}}
    for name, *items in named:
        if name in table:
            raise ParamsError(f"--variant {name}: named twice (`baseline` is params.yaml as is)")
        table[check_name(name, "--variant")] = parse_sets(items)
    if grids:
        table.update(combinations(grids))
    if recipe is not None:
        table.update(variants(read_recipe(recipe, params), read_yaml(params)))
    return table


def combinations(grids: list[str]) -> dict[str, dict[str, Any]]:
    """Every combination of `--grid KEY=V1,V2,...` values, named `<key>_<value>` joined by `_`:
    `--grid mlp.lr=0.001,0.01` gives lr_0.001 and lr_0.01."""
    axes = []
    for item in grids:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ParamsError(f"--grid {short(item)}: not KEY=V1,V2,...")
        axes.append([parse_sets([f"{key}={v}"]) for v in values.split(",")])
    out = {}
    for combo in itertools.product(*axes):
        changes = {k: v for one in combo for k, v in one.items()}
        label = "_".join(f"{k.rsplit('.', 1)[-1]}_{v}" for k, v in changes.items())
        out[check_name(label, "--grid variant")] = changes
    return out


def stages_for(table: dict[str, dict[str, Any]], named: list[str]) -> tuple[str, ...]:
    """The DVC stages to train: those named with --stage, else those of the sections the
    variants change (`mlp.lr` -> train_mlp)."""
    for stage in named:
        if stage not in SECTIONS:
            raise ParamsError(f"--stage {short(stage)}: a training stage ({', '.join(SECTIONS)})")
    if named:
        return tuple(dict.fromkeys(named))
    touched = {key.split(".")[0] for changes in table.values() for key in changes}
    found = tuple(STAGES[s] for s in STAGES if s in touched)
    if not found:
        raise ParamsError("the variants change no training section: name one with --stage")
    return found


def grid(
    sweep: str,
    table: dict[str, dict[str, Any]],
    seeds: list[int],
    stages: tuple[str, ...] | list[str],
    common: list[str] = (),  # type: ignore[assignment]
    cpus: float = 1,
) -> list[Point]:
    """The grid points, variant by variant and seed by seed. `common` `-S` items apply to every
    point; each training section runs `max(1, int(cpus))` torch threads unless a variant says."""
    check_name(sweep, "sweep name")
    shared = parse_sets(list(common))
    points = []
    for variant, changes in table.items():
        merged = {**shared, **changes}
        for section in (SECTIONS[s] for s in stages):
            merged.setdefault(f"{section}.threads", max(1, int(cpus)))
        for seed in seeds:
            sets = tuple(as_set(k, v) for k, v in {**merged, "seed": seed}.items())
            point = Point(sweep, variant, seed, sets, tuple(stages))
            check_exp_name(point.name)
            points.append(point)
    if len(points) > MAX_POINTS:
        raise ParamsError(f"the grid has {len(points)} points; at most {MAX_POINTS}")
    return points
