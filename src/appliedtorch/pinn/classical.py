"""The classical solver beside the PINN: scipy.integrate.solve_bvp on u'' + u = 0, u(0) = 0,
u(π/2) = 1, checked against sin x on the same points as the network.

    >>> bvp = solve_bvp_baseline(tolerance=1e-8)
    >>> bvp.max_abs_error < 1e-9, bvp.nodes
    (True, 161)

A collocation solver with a residual-controlled mesh: on this smooth one-dimensional problem it
reaches a given accuracy far faster than any network (docs/pinn.md has the figures).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_bvp

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import error_digits
from appliedtorch.pinn.problem import UA, UB, A, B


@dataclass(frozen=True)
class BVPResult:
    """solve_bvp's answer: its error against sin x, mesh nodes and time."""

    max_abs_error: float
    nodes: int
    seconds: float


def solve_bvp_baseline(tolerance: float, eval_points: int = 1000) -> BVPResult:
    """Solve the forward problem with solve_bvp at `tol=tolerance`; error on eval_points points.

    Timed warm, as the PINN is (its time leaves out loading torch): a first call loads SciPy's
    lazily imported pieces and takes several times longer."""
    _solve(1e-3)
    tic = time.perf_counter()
    sol = _solve(tolerance)
    seconds = time.perf_counter() - tic
    if not sol.success:
        raise AppliedTorchError(f"pinn.bvp_tolerance {tolerance:g}: solve_bvp {sol.message}")
    x = np.linspace(A, B, eval_points)
    error = float(np.abs(sol.sol(x)[0] - np.sin(x)).max())
    return BVPResult(max_abs_error=error, nodes=int(sol.x.size), seconds=seconds)


def comparison(pinn: dict[str, float], bvp: BVPResult) -> dict[str, float]:
    """solve_bvp's numbers, the PINN's error and time over solve_bvp's, and the PINN's other
    small numbers as digits (what `dvc metrics show` prints as 0.0).

    The time ratio ends in `_seconds`: only timing keys may differ between two identical runs."""
    return {
        "bvp_max_abs_error": bvp.max_abs_error,
        "bvp_max_error_digits": error_digits(bvp.max_abs_error),
        "bvp_nodes": bvp.nodes,
        "bvp_seconds": bvp.seconds,
        "error_ratio_pinn_to_bvp": pinn["max_abs_error"] / max(bvp.max_abs_error, 1e-300),
        "time_ratio_pinn_to_bvp_seconds": pinn["seconds"] / max(bvp.seconds, 1e-9),
        "l2_relative_error_digits": error_digits(pinn["l2_relative_error"]),
        "final_loss_digits": error_digits(pinn["final_loss"]),
    }


def _solve(tolerance: float):  # noqa: ANN202 - scipy's result object
    mesh = np.linspace(A, B, 11)
    start = np.vstack([UA + (UB - UA) * (mesh - A) / (B - A), np.full_like(mesh, UB - UA)])
    return solve_bvp(
        lambda x, y: np.vstack([y[1], -y[0]]),  # u' = v, v' = -u
        lambda ya, yb: np.array([ya[0] - UA, yb[0] - UB]),
        mesh,
        start,
        tol=tolerance,
        max_nodes=1_000_000,
    )
