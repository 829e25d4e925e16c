"""Figures of the math demos: each returns a matplotlib Figure, never shows it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from appliedtorch.plots import plt


def gradient_descent_figure(
    path: np.typing.ArrayLike, fn: Callable[[np.ndarray], np.ndarray], x_min: float
) -> Figure:
    """Gradient-descent iterates `path` drawn on the curve `fn` (NumPy in, NumPy out), minimum starred."""
    xs = np.asarray(path, dtype=float)
    lo, hi = min(xs.min(), x_min, 0.0), max(xs.max(), x_min)  # 0 shows the stationary trap
    grid = np.linspace(lo - 0.1 * (hi - lo) - 0.3, hi + 0.05 * (hi - lo) + 0.1, 400)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(grid, fn(grid), color="0.3", label="f(x)")
    ax.plot(0.0, fn(np.zeros(1))[0], "o", mfc="none", color="0.4", label="stationary x = 0")
    ax.plot(xs, fn(xs), "o-", ms=3, lw=0.8, color="tab:blue", label=f"descent, {len(xs) - 1} steps")
    ax.plot(xs[0], fn(xs[0]), "s", color="tab:orange", label=f"start x0 = {xs[0]:g}")
    ax.plot(x_min, fn(x_min), "*", ms=14, color="tab:red", label=f"x* = {x_min:g}")
    ax.set(xlabel="x", ylabel="f(x)", title=f"Gradient descent: final x = {xs[-1]:.10g}")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def fft_spectrum_figure(
    freqs: np.typing.ArrayLike,
    amplitude: np.typing.ArrayLike,
    peaks: list[tuple[float, float]],
) -> Figure:
    """One-sided amplitude spectrum with the detected `peaks` ((Hz, amplitude) pairs) marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.stem(np.asarray(freqs), np.asarray(amplitude), basefmt=" ", markerfmt=".")
    for hz, amp in peaks:
        ax.plot(hz, amp, "o", mfc="none", ms=10, color="tab:red")
        ax.annotate(f"{hz:g} Hz, {amp:.3f}", (hz, amp), xytext=(6, 4), textcoords="offset points")
    ax.set(xlabel="frequency [Hz]", ylabel="amplitude", title="FFT amplitude spectrum")
    ax.grid(alpha=0.3)
    return fig
