"""Figures of the classifier stages: each returns a matplotlib Figure, never shows it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from appliedtorch.plots import plt

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
