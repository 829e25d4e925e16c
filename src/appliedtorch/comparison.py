"""Comparing experiments' results: each variant's mean ± CI and Welch's test against the baseline.

    python -m appliedtorch.recipes compare recipes/cnn-fast.yaml --results

Read from `dvc exp show --json` (bounded and checked by `appliedtorch.exp_show`): an experiment
whose field cannot be used gets one line naming it and the field; the others still compare.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from appliedtorch import exp_show
from appliedtorch.classify.params import MAX_SEEDS
from appliedtorch.core.errors import AppliedTorchError

log = logging.getLogger(__name__)


def shown_experiments() -> dict[str, dict[str, Any]]:
    """{experiment name: its params and metrics} from `dvc exp show --json` in this repository,
    bounded and checked (`appliedtorch.exp_show`); a warning line for each one left out."""
    code, out, last = exp_show.read_bounded(["dvc", "exp", "show", "--json"])
    if code != 0:
        raise AppliedTorchError(f"dvc exp show failed: {last or code}")
    shown, skipped = exp_show.parse_shown(out)
    for line in skipped:
        log.warning("%s: left out of the comparison", line)
    return shown


def estimate(data: dict[str, Any], section: str, metric: str = "test_accuracy") -> dict[str, Any]:
    """An experiment's `metric`: {n, mean, sd, low, high, ensemble} from its metrics.json, where
    `seeds` > 1 wrote the members' statistics; a single net's value alone otherwise; {} when it
    has no such metric. exp_show.Unusable names the field when one is there but unusable."""
    file = f"reports/{section}/metrics.json"
    metrics = exp_show.section_of(data, "metrics", file)
    params = exp_show.section_of(data, "params", "params.yaml") or {}
    if metrics is None or metric not in metrics:
        return {}
    if f"{metric}_mean" not in metrics:
        return {"n": 1, "mean": exp_show.checked(exp_show.Fraction, metrics[metric], metric)}
    seeds = (params.get(section) or {}).get("seeds", 1) if isinstance(params, dict) else 1
    n = exp_show.checked(_SEEDS, seeds, f"params.yaml {section}.seeds")
    out: dict[str, Any] = {"n": n}
    for key, field in _STATS.items():
        name = f"{metric}{field}"
        if name not in metrics:
            raise exp_show.Unusable(f"{file} has {metric}_mean but no {name}")
        schema = {"sd": exp_show.Spread, "low": exp_show.Finite, "high": exp_show.Finite}
        out[key] = exp_show.checked(
            schema.get(key, exp_show.Fraction), metrics[name], f"{file} {name}"
        )
    if n < 2 or not out["low"] <= out["mean"] <= out["high"]:
        raise exp_show.Unusable(
            f"{file} {metric}: members' statistics of {n} seed(s) with mean {out['mean']:.4g} "
            f"outside its CI [{out['low']:.4g}, {out['high']:.4g}] or fewer than 2 seeds"
        )
    return out


# estimate's keys and the suffix of the metrics.json key each comes from
_STATS = {
    "mean": "_mean",
    "sd": "_sd",
    "low": "_ci95_low",
    "high": "_ci95_high",
    "ensemble": "",
}
_SEEDS = exp_show.count_schema(MAX_SEEDS)


def welch_p(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Welch's two-sided t-test p-value of two variants' member means (None without sds)."""
    from scipy import stats

    if "sd" not in a or "sd" not in b:
        return None
    result = stats.ttest_ind_from_stats(
        a["mean"], a["sd"], a["n"], b["mean"], b["sd"], b["n"], equal_var=False
    )
    return float(result.pvalue)


def results_lines(
    name: str, table: dict[str, Any], sections: list[str], shown: dict[str, dict[str, Any]]
) -> list[str]:
    """The comparison as text: per section, one line per variant with its members' mean test
    accuracy ± 95 % CI half-width, the interval, the ensemble's accuracy and Welch's p."""
    lines = []
    for section in sections:
        lines.append(
            f"reports/{section}/metrics.json test_accuracy: members' mean ± 95 % CI (Student's t), "
            "ensemble, Welch's t-test p against baseline"
        )
        base = _estimate_or_why(shown, f"{name}.baseline", section)
        base = base if isinstance(base, dict) else {}  # its own line says why
        for variant in table:
            est = _estimate_or_why(shown, f"{name}.{variant}", section)
            text = est if isinstance(est, str) else result_text(est, base, variant == "baseline")
            lines.append(f"  {variant:<14} {text}")
    return lines


def _estimate_or_why(shown: dict[str, dict[str, Any]], exp: str, section: str) -> Any:
    """estimate() of experiment `exp`, or the one line saying which field it cannot use."""
    try:
        return estimate(shown.get(exp, {}), section)
    except exp_show.Unusable as exc:
        return f"not compared: experiment {exp}: {exc}"


def result_text(est: dict[str, Any], base: dict[str, Any], is_base: bool) -> str:
    """`n=3  61.23 % ± 1.20  [60.03, 62.43] %  ensemble 62.00 %  p=0.0123` for one variant."""
    if not est:
        return "no result (not run yet: `dvc queue start`, then `dvc exp show`)"
    pct = 100 * est["mean"]
    if "sd" not in est:
        return f"n=1  {pct:.2f} %  (no CI with seeds: 1; compare with --seeds N)"
    half = 100 * (est["high"] - est["low"]) / 2
    text = (
        f"n={est['n']}  {pct:.2f} % ± {half:.2f}  [{100 * est['low']:.2f}, "
        f"{100 * est['high']:.2f}] %"
    )
    if "ensemble" in est:  # a sweep's variant of single nets has none (sweep/results.py)
        text += f"  ensemble {100 * est['ensemble']:.2f} %"
    if is_base:
        return text
    p = welch_p(est, base)
    return f"{text}  p={p:.4g}" if p is not None and math.isfinite(p) else f"{text}  p=—"
