"""Figures for the reports. Every function returns a matplotlib Figure and never calls show()."""

from __future__ import annotations

from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


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


# --- classifiers (train_mlp, train_cnn) ---------------------------------------------------------

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd


def training_curves(history: pd.DataFrame, title: str = "") -> Figure:
    """Train/test loss and test accuracy per epoch, from a history table (see training.history_frame)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(history["epoch"], history["train_loss"], "o-", label="train")
    ax_loss.plot(history["epoch"], history["test_loss"], "s-", label="test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    ax_loss.legend()
    ax_acc.plot(history["epoch"], 100 * history["test_accuracy"], "o-", color="tab:green")
    last = history.iloc[-1]
    ax_acc.set(
        xlabel="epoch",
        ylabel="test accuracy [%]",
        title=f"Test accuracy (final {100 * last['test_accuracy']:.2f}%)",
    )
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_heatmap(cm: np.ndarray, classes: list[str], title: str = "") -> Figure:
    """Confusion matrix as a seaborn heatmap with counts; rows actual, columns predicted."""
    import seaborn as sns

    size = max(6.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    sns.heatmap(
        cm,
        annot=True,
        fmt="d",
        cmap="Blues",
        xticklabels=classes,
        yticklabels=classes,
        square=True,
        cbar_kws={"label": "count"},
        ax=ax,
    )
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set(
        xlabel="predicted",
        ylabel="actual",
        title=f"{title + ': ' if title else ''}confusion matrix, {cm.sum()} test images, "
        f"accuracy {100 * acc:.2f}%",
    )
    ax.tick_params(axis="x", rotation=45)
    ax.tick_params(axis="y", rotation=0)
    fig.tight_layout()
    return fig


def per_class_accuracy_bars(
    accuracy: list[float | None], classes: list[str], title: str = ""
) -> Figure:
    """Bar chart of each class's test accuracy (recall); classes absent from the test set are blank."""
    values = np.array([np.nan if a is None else 100 * a for a in accuracy], dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(classes) + 1), 4))
    bars = ax.bar(range(len(classes)), np.nan_to_num(values), color="tab:blue")
    for bar, v in zip(bars, values, strict=True):
        label = "n/a" if np.isnan(v) else f"{v:.1f}"
        ax.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    mean = np.nanmean(values) if np.isfinite(values).any() else np.nan
    ax.axhline(mean, color="tab:red", ls="--", lw=1, label=f"mean {mean:.1f}%")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set(
        ylabel="test accuracy [%]",
        ylim=(0, 105),
        title=f"{title + ': ' if title else ''}accuracy per class",
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def prediction_grid(
    images: np.typing.ArrayLike,
    predicted: np.typing.ArrayLike,
    actual: np.typing.ArrayLike,
    classes: list[str],
    title: str = "",
    n: int = 32,
    cols: int = 8,
) -> Figure:
    """The first `n` test images (uint8 N,C,H,W) titled predicted/true; wrong ones in red, framed."""
    images = np.asarray(images)[:n]
    predicted, actual = np.asarray(predicted)[:n], np.asarray(actual)[:n]
    rows = max(1, int(np.ceil(len(images) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, img, p, a in zip(axes.flat, images, predicted, actual, strict=False):
        img = img.transpose(1, 2, 0)  # (H, W, C) for imshow
        ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
        wrong = p != a
        ax.set_title(
            f"{'✗ ' if wrong else ''}{classes[p]}\n(true {classes[a]})",
            fontsize=7,
            color="tab:red" if wrong else "black",
        )
        if wrong:  # a red frame: axis off hides spines, so draw a rectangle
            h, w = img.shape[:2]
            ax.add_patch(plt.Rectangle((-0.5, -0.5), w, h, fill=False, ec="tab:red", lw=3))
    errors = int((predicted != actual).sum())
    fig.suptitle(
        f"{title + ': ' if title else ''}predicted (true) for {len(images)} test images, "
        f"{errors} wrong (red)"
    )
    # Fixed spacing: tight_layout over dozens of axes costs seconds and gains nothing here.
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.45 / rows, hspace=0.55)
    return fig


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
