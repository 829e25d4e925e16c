"""Figures of the PINN stage: each returns a matplotlib Figure, never shows it."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from appliedtorch.plots import plt


def pinn_solution_figure(x: np.ndarray, u_pred: np.ndarray, u_exact: np.ndarray) -> Figure:
    """PINN solution against the exact one on the same points."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, u_exact, color="black", lw=3, alpha=0.35, label="exact: sin x")
    ax.plot(x, u_pred, color="tab:blue", lw=1.5, ls="--", label="PINN")
    ax.set(xlabel="x", ylabel="u(x)", title="u'' + u = 0, u(0) = 0, u(π/2) = 1")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def pinn_error_figure(x: np.ndarray, abs_error: np.ndarray) -> Figure:
    """Pointwise |PINN - exact| on a log scale."""
    fig, ax = plt.subplots(figsize=(6, 4))
    # Exact zeros (a hard-BC net at the boundary) cannot be drawn on a log axis.
    shown = np.where(abs_error > 0, abs_error, np.nan)
    ax.semilogy(x, shown, color="tab:red", lw=1.2)
    ax.set(
        xlabel="x",
        ylabel="|u_PINN(x) - sin x|",
        title=f"Pointwise error (max {abs_error.max():.2e})",
    )
    ax.grid(alpha=0.3, which="both")
    return fig


def pinn_loss_figure(loss: list[float] | np.ndarray, phases: dict[str, tuple[int, int]]) -> Figure:
    """Training loss per step on a log scale, with each optimizer phase shaded and named."""
    names = {"adam": "Adam", "lbfgs": "L-BFGS", "lm": "Levenberg-Marquardt"}
    colors = {"adam": "tab:blue", "lbfgs": "tab:orange", "lm": "tab:green"}
    loss = np.asarray(loss, dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(loss) + 1)
    for phase, (start, end) in phases.items():
        if end <= start:
            continue
        color = colors.get(phase, "tab:gray")
        ax.axvspan(start + 0.5, end + 0.5, color=color, alpha=0.08)
        ax.semilogy(
            steps[start:end], loss[start:end], color=color, lw=1, label=names.get(phase, phase)
        )
    ax.set(xlabel="step", ylabel="loss", title="PINN training loss")
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig
