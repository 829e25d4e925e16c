"""The report's accuracy chart: an inline SVG (the page stays one self-contained file) of each
classifier's test accuracy, with a 95 % confidence interval when it trained several seeds.

    svg = accuracy_chart([("MNIST", mlp_metrics), ("CIFAR-10", cnn_metrics)])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import markupsafe


def accuracy_point(m: Mapping[str, Any]) -> dict[str, float] | None:
    """A classifier's test accuracy for the chart: the members' mean with its 95 % CI when it
    trained several seeds (and the ensemble's accuracy), else its one value."""
    if not isinstance(m.get("test_accuracy"), (int, float)):
        return None
    keys = ("test_accuracy_mean", "test_accuracy_ci95_low", "test_accuracy_ci95_high")
    if all(isinstance(m.get(k), (int, float)) for k in keys):
        mean, low, high = (float(m[k]) for k in keys)
        return {"mean": mean, "low": low, "high": high, "ensemble": float(m["test_accuracy"])}
    return {"mean": float(m["test_accuracy"])}


def accuracy_chart(classifiers: list[tuple[str, Mapping[str, Any]]]) -> markupsafe.Markup:
    """An inline SVG of each classifier's test accuracy (`[(name, metrics), ...]`): the members'
    mean with a 95 % CI error bar and the ensemble as a diamond when the run trained several
    seeds, a dot otherwise. Empty when no classifier has metrics."""
    rows = [(name, p) for name, m in classifiers if (p := accuracy_point(m)) is not None]
    rows = [(n, p) for n, p in rows if all(0 <= v <= 1 for v in p.values())]
    if not rows:
        return markupsafe.Markup("")
    values = [v for _, p in rows for v in p.values()]
    lo, hi = max(0.0, min(values) - 0.02), min(1.0, max(values) + 0.02)
    left, width, row = 160, 360, 34  # title | axis | label

    def x(v: float) -> float:
        return left + width * (v - lo) / max(hi - lo, 1e-9)

    e = markupsafe.escape
    parts = [
        f'<svg class="accuracy-chart" xmlns="http://www.w3.org/2000/svg" width="{left + width + 300}" '
        f'height="{row * len(rows) + 30}" role="img" aria-label="test accuracy">',
        f'<text x="{left}" y="{row * len(rows) + 24}" font-size="11">{100 * lo:.1f} %</text>',
        f'<text x="{left + width}" y="{row * len(rows) + 24}" font-size="11" '
        f'text-anchor="end">{100 * hi:.1f} %</text>',
    ]
    for i, (name, p) in enumerate(rows):
        y = row * i + 18
        parts.append(f'<text x="4" y="{y + 4}" font-size="12">{e(name)}</text>')
        label = f"{100 * p['mean']:.2f} %"
        if "low" in p:
            parts.append(
                f'<line class="ci" x1="{x(p["low"]):.1f}" x2="{x(p["high"]):.1f}" y1="{y}" '
                f'y2="{y}" stroke="#1f5f99" stroke-width="2"/>'
            )
            for end in (p["low"], p["high"]):
                parts.append(
                    f'<line x1="{x(end):.1f}" x2="{x(end):.1f}" y1="{y - 6}" y2="{y + 6}" '
                    'stroke="#1f5f99" stroke-width="2"/>'
                )
            ex = x(p["ensemble"])
            parts.append(
                f'<path class="ensemble" d="M{ex:.1f} {y - 6}l6 6-6 6-6-6z" fill="#b00020"/>'
            )
            half = 100 * (p["high"] - p["low"]) / 2
            label = f"members {label} ± {half:.2f}, ensemble {100 * p['ensemble']:.2f} %"
        parts.append(f'<circle cx="{x(p["mean"]):.1f}" cy="{y}" r="4" fill="#1d2329"/>')
        parts.append(f"<title>{e(label)}</title>")
        parts.append(f'<text x="{left + width + 12}" y="{y + 4}" font-size="11">{e(label)}</text>')
    parts.append("</svg>")
    return markupsafe.Markup("\n".join(parts))
