"""The PINN's outputs: errors against sin x, the verified model file, metrics and figures."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from appliedtorch.core.utils import error_digits
from appliedtorch.pinn.problem import PINNNet, boundary_points, exact_solution, grid, torch_dtype
from appliedtorch.pinn.solver import PINNResult

log = logging.getLogger(__name__)


def evaluate(net: PINNNet, n_points: int = 1000) -> dict[str, float]:
    """Max absolute and relative L2 error against sin x on n evenly spaced points of [A, B]."""
    dtype = next(net.parameters()).dtype
    x = grid(n_points, dtype)
    with torch.no_grad():
        err = net(x) - exact_solution(x)
        exact = exact_solution(x)
    return {
        "max_abs_error": float(err.abs().max()),
        "l2_relative_error": float(err.norm() / exact.norm()),
    }


def save_pinn(net: PINNNet, path: str | Path) -> None:
    """Save the weights and the config that rebuilds the network (atomic)."""
    from appliedtorch.core.utils import save_torch

    save_torch({"state_dict": net.state_dict(), "config": net.config()}, path)


def load_pinn(path: str | Path) -> PINNNet:
    """Rebuild a network written by `save_pinn`."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = dict(blob["config"])
    net = PINNNet(cfg["hidden_sizes"], cfg["boundary"], torch_dtype(cfg["dtype"]))
    net.load_state_dict(blob["state_dict"])
    return net.eval()


def save_verified(net: PINNNet, path: str | Path, n_points: int = 1000) -> dict[str, float]:
    """Save the network, reload it and check it reproduces the same errors; return them."""
    from appliedtorch.core.errors import AppliedTorchError

    before = evaluate(net, n_points)
    save_pinn(net, path)
    after = evaluate(load_pinn(path), n_points)
    if after != before:
        raise AppliedTorchError(f"{path}: reloaded PINN gives {after}, not {before}; disk full?")
    return after


# solve_bvp's numbers that metrics.json holds beside the PINN's (few: `dvc metrics show` draws
# one column per key of every stage); its error, the ratios and the rest go to bvp.json.
# metrics.json: what `dvc metrics show` puts beside the other stages' headlines (digits, not the
# errors themselves, which a table of 3 to 5 decimals shows as 0.0); the rest in details.json.
HEADLINE = ("max_error_digits", "seconds")
HEADLINE_BVP = ("bvp_max_error_digits",)


def summary_metrics(result: PINNResult, n_points: int = 1000) -> dict[str, float]:
    """metrics.json: the errors against sin x, the boundary error, the final loss and seconds.

    `max_error_digits` is -log10 of the max error (8.6 for 2.5e-9): the accuracy in a form no
    table rounds to 0.0, as `dvc metrics show` does with the error itself."""
    metrics: dict[str, float] = dict(evaluate(result.net, n_points))
    metrics["max_error_digits"] = error_digits(metrics["max_abs_error"])
    xb, ub = boundary_points(next(result.net.parameters()).dtype)
    with torch.no_grad():
        metrics["boundary_error"] = float((result.net(xb) - ub).abs().max())
    metrics["final_loss"] = result.loss[-1] if result.loss else float("nan")
    metrics["seconds"] = result.seconds["total"]
    return metrics


def phase_metrics(result: PINNResult) -> dict[str, float]:
    """phases.json: steps, final loss and seconds of each phase (Adam, L-BFGS, L-M)."""
    metrics: dict[str, float] = {}
    for phase in ("adam", "lbfgs", "lm"):
        start, end = result.phases.get(phase, (0, 0))
        metrics[f"{phase}_steps"] = end - start
        if end > start:
            metrics[f"{phase}_final_loss"] = result.loss[end - 1]
            metrics[f"{phase}_seconds"] = result.seconds[phase]
    metrics["lbfgs_restarts"] = result.lbfgs_restarts
    return metrics


def loss_log_points(result: PINNResult, max_points: int = 100) -> list[tuple[int, float]]:
    """About `max_points` (step, loss) pairs for a tracker, always including each phase's last."""
    stride = max(1, math.ceil(len(result.loss) / max_points))
    keep = set(range(0, len(result.loss), stride))
    keep |= {end - 1 for start, end in result.phases.values() if end > start}
    return [(i, result.loss[i]) for i in sorted(keep)]


def write_reports(
    result: PINNResult,
    reports: str | Path,
    n_points: int = 1000,
    beside: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> tuple[dict[str, float], list[Path]]:
    """solution.csv, solution.png, error.png, loss.png, phases.json, details.json (the numbers
    beside the headline), then metrics.json (HEADLINE; last: it
    marks a complete run). solution.csv (x, u, exact, abs_error on the evaluation grid) is the data DVC
    draws as the solution and pointwise-error plots (dvc.yaml `plots:`).

    `beside(metrics)` gives a classical solver's numbers: HEADLINE_BVP to metrics.json, the
    others to bvp.json (written before metrics.json). Returns the metrics
    with the phases' (what MLflow gets) and the paths written."""
    import pandas as pd

    import appliedtorch.pinn.figures as plots
    from appliedtorch.core.utils import write_json, write_text
    from appliedtorch.plots import save_figure

    reports = Path(reports)
    x = grid(n_points, next(result.net.parameters()).dtype)
    with torch.no_grad():
        u, exact = result.net(x).squeeze(1).numpy(), exact_solution(x).squeeze(1).numpy()
    xs = x.squeeze(1).numpy()
    table = pd.DataFrame({"x": xs, "u": u, "exact": exact, "abs_error": abs(u - exact)})
    write_text(reports / "solution.csv", table.to_csv(index=False))
    figures = {
        "solution.png": plots.pinn_solution_figure(xs, u, exact),
        "error.png": plots.pinn_error_figure(xs, abs(u - exact)),
        "loss.png": plots.pinn_loss_figure(result.loss, result.phases),
    }
    for name, fig in figures.items():
        save_figure(fig, reports / name)
    phases = phase_metrics(result)
    write_json(reports / "phases.json", phases)
    metrics = summary_metrics(result, n_points)
    names: tuple[str, ...] = ("solution.csv", *figures, "phases.json", "metrics.json")
    details: dict[str, float] = {}
    if beside:  # the headline beside the PINN's in metrics.json, the rest in bvp.json
        details = beside(metrics)
        metrics |= {k: details.pop(k) for k in HEADLINE_BVP}
        write_json(reports / "bvp.json", details)
        names = (*names[:-1], "bvp.json", names[-1])
    headline = {k: v for k, v in metrics.items() if k in HEADLINE or k in HEADLINE_BVP}
    write_json(reports / "details.json", {k: v for k, v in metrics.items() if k not in headline})
    write_json(reports / "metrics.json", headline)
    names = (*names[:-1], "details.json", names[-1])
    return {**metrics, **phases, **details}, [reports / name for name in names]


def input_example(net: PINNNet, k: int = 5) -> Any:
    """k points of the domain as a (k, 1) NumPy array in the network's dtype (for MLflow)."""
    return grid(k, net.linears[0].weight.dtype).numpy()
