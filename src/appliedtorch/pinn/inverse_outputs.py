"""The inverse stage's outputs: metrics beside the least-squares yardstick, tables and figures.

    metrics, files = write_reports(result, ls, x, u, k_true=1.0, reports=Path("reports/pinn_inverse"))

fit.csv (x, u observed, u fitted, residual) and k_trace.csv (step, k̂) are the data DVC draws;
fit.png, residual.png and k_trace.png the pictures; metrics.json is written last.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from appliedtorch.core.utils import error_digits
from appliedtorch.pinn.inverse import InverseResult, LeastSquaresK, fitted
from appliedtorch.pinn.problem import A, B, closed_form
from appliedtorch.plots import plt

# metrics.json: few keys, since `dvc metrics show` draws one column per key of every stage;
# details.json holds the rest (the error against k_true, the residuals, timings of the parts).
HEADLINE = ("k_hat", "k_difference_digits", "seconds")  # k_lstsq: details.json
PHASE_NAMES = {"adam": "Adam", "lbfgs": "L-BFGS", "lm": "Levenberg-Marquardt"}


def summary_metrics(
    result: InverseResult, ls: LeastSquaresK, k_true: float, points: int
) -> dict[str, float]:
    """k̂, its error and standard error, the least-squares k̂ and the difference, and seconds.

    Each small number also as its digits (-log10), which `dvc metrics show` does not round to 0."""
    metrics = {
        "k_hat": result.k,
        "k_true": k_true,
        "k_error": abs(result.k - k_true),
        "k_standard_error": result.k_standard_error,
        "k_lstsq": ls.k,
        "k_lstsq_standard_error": ls.standard_error,
        "k_difference": abs(result.k - ls.k),
        "data_rms": result.data_rms,
        "pde_rms": result.pde_rms,
        "final_loss": result.loss[-1] if result.loss else math.nan,
        "points": points,
        "seconds": result.seconds["total"],
        "cpu_seconds": result.seconds["cpu"],  # less than `seconds` on a busy machine
        "lstsq_seconds": ls.seconds,
    }
    metrics["k_error_digits"] = error_digits(metrics["k_error"])
    metrics["k_difference_digits"] = error_digits(metrics["k_difference"])
    metrics["pde_rms_digits"] = error_digits(metrics["pde_rms"])
    metrics["k_standard_error_digits"] = error_digits(metrics["k_standard_error"])
    return metrics


def fit_figure(x: np.ndarray, u: np.ndarray, u_fit: np.ndarray, k_hat: float) -> Figure:
    """The observations, the fitted net on a fine grid and the closed form at k̂."""
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = np.linspace(A, B, 400)
    ax.plot(x, u, "o", ms=3, color="black", alpha=0.6, label="observations")
    ax.plot(xs, u_fit, color="tab:blue", lw=1.5, label=f"PINN, k̂ = {k_hat:.6f}")
    ax.plot(xs, closed_form(xs, k_hat), color="tab:orange", lw=1, ls="--", label="closed form at k̂")
    ax.set(xlabel="x", ylabel="u(x)", title="u'' + k·u = 0: k from observations")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def residual_figure(x: np.ndarray, residual: np.ndarray) -> Figure:
    """u_net(x_i) - u_i at each observation."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.axhline(0, color="gray", lw=0.8)
    ax.plot(x, residual, "o", ms=3, color="tab:red")
    rms = float(np.sqrt(np.mean(residual**2)))
    ax.set(xlabel="x", ylabel="u_PINN(x_i) - u_i", title=f"Residual at the data (RMS {rms:.2e})")
    ax.grid(alpha=0.3)
    return fig


def trace_figure(
    trace: list[float], phases: dict[str, tuple[int, int]], k_lstsq: float, k_true: float
) -> Figure:
    """k̂ over training, with the least-squares k̂ and k_true; each phase shaded."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    steps = np.arange(1, len(trace) + 1)
    k = np.asarray(trace)
    top.plot(steps, k, color="tab:blue", lw=1.2, label="k̂")
    top.axhline(k_true, color="black", lw=0.8, ls=":", label=f"k_true = {k_true:g}")
    top.axhline(k_lstsq, color="tab:orange", lw=0.8, ls="--", label="least squares")
    gap = np.abs(k - k_lstsq)
    bottom.semilogy(steps, np.where(gap > 0, gap, np.nan), color="tab:green", lw=1.2)
    for phase, (start, end) in phases.items():
        for ax in (top, bottom):
            ax.axvspan(start + 0.5, end + 0.5, alpha=0.06, color="gray")
        top.text(start + 1, top.get_ylim()[1], PHASE_NAMES.get(phase, phase), va="top", fontsize=8)
    top.set(ylabel="k̂", title="k̂ over training")
    top.legend(loc="lower right")
    bottom.set(xlabel="step", ylabel="|k̂ - least-squares k̂|")
    for ax in (top, bottom):
        ax.grid(alpha=0.3, which="both")
    return fig


def write_reports(
    result: InverseResult,
    ls: LeastSquaresK,
    observations: tuple[np.ndarray, np.ndarray],
    k_true: float,
    reports: str | Path,
) -> tuple[dict[str, float], list[Path]]:
    """fit.csv, k_trace.csv, the figures, details.json, then metrics.json (HEADLINE); (all the
    metrics, paths written)."""
    import pandas as pd

    from appliedtorch.core.utils import write_json, write_text
    from appliedtorch.plots import save_figure

    reports = Path(reports)
    x, u = observations
    u_net = fitted(result.net, x)
    table = pd.DataFrame({"x": x, "u": u, "u_fit": u_net, "residual": u_net - u})
    write_text(reports / "fit.csv", table.to_csv(index=False))
    trace = pd.DataFrame({"step": np.arange(1, len(result.k_trace) + 1), "k_hat": result.k_trace})
    write_text(reports / "k_trace.csv", trace.to_csv(index=False))
    figures = {
        "fit.png": fit_figure(x, u, fitted(result.net, np.linspace(A, B, 400)), result.k),
        "residual.png": residual_figure(x, u_net - u),
        "k_trace.png": trace_figure(result.k_trace, result.phases, ls.k, k_true),
    }
    for name, fig in figures.items():
        save_figure(fig, reports / name)
    metrics = summary_metrics(result, ls, k_true, len(x))
    write_json(reports / "details.json", {k: v for k, v in metrics.items() if k not in HEADLINE})
    write_json(reports / "metrics.json", {k: metrics[k] for k in HEADLINE})
    names = ("fit.csv", "k_trace.csv", *figures, "details.json", "metrics.json")
    return metrics, [reports / name for name in names]
