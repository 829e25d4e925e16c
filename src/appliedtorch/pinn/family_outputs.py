"""The family stage's outputs: the error on unseen k against the closed form, table and figures.

    metrics, files = write_reports(result, cfg, reports=Path("reports/pinn_family"))

error_by_k.csv (k, max_abs_error over x) is the data DVC draws; error_by_k.png, solutions.png and
loss.png the pictures; metrics.json is written last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from appliedtorch.core.utils import error_digits
from appliedtorch.pinn.family import FamilyNet, FamilyResult, chebyshev, errors_by_k, unseen_k
from appliedtorch.pinn.problem import exact_solution_k, grid
from appliedtorch.plots import plt

# metrics.json: the forward PINN's key names, so `dvc metrics show` adds no column for them;
# details.json holds the rest.
HEADLINE = ("max_error_digits", "seconds")  # the error itself: details.json


def error_figure(ks: np.ndarray, errors: np.ndarray, trained: np.ndarray) -> Figure:
    """Max error over x for each unseen k, with the training values of k marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(ks, errors, color="tab:red", lw=1.2, marker=".", ms=3, label="unseen k")
    for i, k in enumerate(trained):
        ax.axvline(k, color="gray", lw=0.5, alpha=0.5, label="training k" if i == 0 else None)
    ax.set(
        xlabel="k",
        ylabel="max over x of |u_net - u|",
        title=f"Error of one net for u'' + k·u = 0 (max {errors.max():.2e})",
    )
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    return fig


def solutions_figure(net: FamilyNet, ks: list[float]) -> Figure:
    """The net's u(x; k) against the closed form for a few k."""
    fig, ax = plt.subplots(figsize=(6, 4))
    x = grid(200, torch.float64)
    with torch.no_grad():
        for k in ks:
            kk = torch.full_like(x, k)
            exact = exact_solution_k(x, k).squeeze(1).numpy()
            ax.plot(x.squeeze(1), exact, color="black", lw=3, alpha=0.3)
            ax.plot(
                x.squeeze(1), net(x, kk).squeeze(1).numpy(), lw=1.2, ls="--", label=f"k = {k:g}"
            )
    ax.set(xlabel="x", ylabel="u(x; k)", title="One net, several k (grey: closed form)")
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def write_reports(
    result: FamilyResult, cfg: Any, reports: str | Path
) -> tuple[dict[str, float], list[Path]]:
    """error_by_k.csv, the figures, details.json, then metrics.json (HEADLINE); (all the metrics,
    paths written)."""
    import pandas as pd

    from appliedtorch.core.utils import write_json, write_text
    from appliedtorch.pinn.figures import pinn_loss_figure
    from appliedtorch.plots import save_figure

    reports = Path(reports)
    ks = unseen_k(cfg)
    errors = errors_by_k(result.net, ks, cfg.eval_x_points)
    trained = chebyshev(cfg.k_points, cfg.k_min, cfg.k_max)
    table = pd.DataFrame({"k": ks, "max_abs_error": errors})
    write_text(reports / "error_by_k.csv", table.to_csv(index=False))
    middle = round((cfg.k_min + cfg.k_max) / 2, 2)
    figures = {
        "error_by_k.png": error_figure(ks, errors, trained),
        "solutions.png": solutions_figure(result.net, [cfg.k_min, middle, cfg.k_max]),
        "loss.png": pinn_loss_figure(result.loss, result.phases),
    }
    for name, fig in figures.items():
        save_figure(fig, reports / name)
    metrics = {
        "max_abs_error": float(errors.max()),
        "max_error_digits": error_digits(float(errors.max())),
        "mean_max_abs_error": float(errors.mean()),
        "worst_k": float(ks[errors.argmax()]),
        "eval_k_points": len(ks),
        "eval_x_points": cfg.eval_x_points,
        "min_distance_to_training_k": float(np.abs(ks[:, None] - trained[None, :]).min()),
        "final_loss": result.loss[-1] if result.loss else float("nan"),
        "final_loss_digits": error_digits(result.loss[-1]) if result.loss else float("nan"),
        "weights": sum(p.numel() for p in result.net.parameters()),
        "seconds": result.seconds["total"],
        "cpu_seconds": result.seconds["cpu"],  # less than `seconds` on a busy machine
    }
    write_json(reports / "details.json", {k: v for k, v in metrics.items() if k not in HEADLINE})
    write_json(reports / "metrics.json", {k: metrics[k] for k in HEADLINE})
    names = ("error_by_k.csv", *figures, "details.json", "metrics.json")
    return metrics, [reports / name for name in names]
