"""A sweep's results in one place: its experiments pulled, compared variant against baseline.

    lines, summary = comparison(points, shown_experiments())

Each variant's value is the mean over its seeds (one DVC experiment each) of the test accuracy,
with a 95 % CI (Student's t), its experiments' mean ensemble accuracy where the stage trained an
ensemble (`<section>.seeds` > 1), and Welch's t-test p against `baseline`: the statistics and
the line format of `python -m appliedtorch.recipes compare --results` (recipes.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from appliedtorch.recipes import estimate, result_text
from appliedtorch.sweep.checks import dvc, last_line
from appliedtorch.sweep.grid import SECTIONS, Point

METRIC = "test_accuracy"


def pull(root: Any, remote: str, names: Sequence[str]) -> None:
    """`dvc exp pull` the experiments `names` from git remote `remote` (their outputs too)."""
    if not names:
        return
    proc = dvc(root, "exp", "pull", remote, *names)
    if proc.returncode != 0:
        from appliedtorch.core.errors import AppliedTorchError

        raise AppliedTorchError(f"dvc exp pull failed: {last_line(proc.stderr, 'no output')}")


def summarise(values: Sequence[float], ensembles: Sequence[float]) -> dict[str, Any]:
    """{n, mean[, sd, low, high][, ensemble]} of one variant's per-seed values."""
    from scipy import stats

    n = len(values)
    out: dict[str, Any] = {"n": n, "mean": statistics.fmean(values)}
    if n > 1:
        sd = statistics.stdev(values)
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out |= {"sd": sd, "low": out["mean"] - half, "high": out["mean"] + half}
    if ensembles and len(ensembles) == n:
        out["ensemble"] = statistics.fmean(ensembles)
    return out


def variant_estimates(
    points: Sequence[Point], shown: dict[str, dict[str, Any]], section: str
) -> dict[str, dict[str, Any]]:
    """{variant: summarise(...)} from the experiments `dvc exp show` holds ({} when none ran)."""
    values: dict[str, list[float]] = {}
    ensembles: dict[str, list[float]] = {}
    for point in points:
        values.setdefault(point.variant, [])
        est = estimate(shown.get(point.name, {}), section, METRIC)
        if not est:
            continue
        values[point.variant].append(est["mean"])
        if "ensemble" in est:
            ensembles.setdefault(point.variant, []).append(est["ensemble"])
    return {v: summarise(vals, ensembles.get(v, [])) if vals else {} for v, vals in values.items()}


def comparison(
    points: Sequence[Point], shown: dict[str, dict[str, Any]]
) -> tuple[list[str], dict[str, float]]:
    """The comparison as text lines, and its numbers as MLflow metrics of the parent run
    (`<section>.<variant>.test_accuracy_mean`, ...)."""
    lines, summary = [], {}
    for section in (SECTIONS[s] for s in points[0].stages) if points else ():
        lines.append(
            f"reports/{section}/metrics.json {METRIC}: mean over seeds ± 95 % CI (Student's t), "
            "ensemble where trained, Welch's t-test p against baseline"
        )
        table = variant_estimates(points, shown, section)
        base = table.get("baseline", {})
        for variant, est in table.items():
            text = result_text(est, base, variant == "baseline") if est else "no result"
            lines.append(f"  {variant:<14} {text}")
            for key in ("mean", "low", "high", "ensemble"):
                if key in est:
                    summary[f"{section}.{variant}.{METRIC}_{key}"] = est[key]
    return lines, summary
