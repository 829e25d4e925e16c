"""How much memory the PINN stage needs, from its params alone: checked before any weight is made.

    check_budget(p)   # "pinn.hidden_sizes [65536, 65536, 65536] (8,590 M weights) needs ~275 GB ..."

The phases run one after another, so the need is the net's weights, gradients and Adam state plus
the largest phase: Adam's activations (value, first and second derivative through every layer,
for every collocation point), L-BFGS's history, or Levenberg-Marquardt's per-point copies of the
weights, its (points x weights) Jacobian and (weights x weights) normal matrix.
"""

from __future__ import annotations

from typing import Any

import torch

from appliedtorch.machine.budget import Need, check_device, check_memory

# Tensors of (points, width) per hidden layer that the Taylor-mode forward keeps for backward:
# the value and two derivatives through the linear map and tanh, and tanh's derivatives.
TAYLOR_TENSORS = 12


def weight_count(hidden_sizes: list[int]) -> int:
    """Weights and biases of the 1 -> hidden... -> 1 tanh net."""
    widths = [1, *hidden_sizes, 1]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=False))


def estimate(cfg: Any) -> Need:
    """The stage's peak memory need, in named parts (the largest phase only)."""
    size = 8 if cfg.dtype == "float64" else 4
    weights = weight_count(cfg.hidden_sizes)
    units = sum(cfg.hidden_sizes)
    points = cfg.collocation_points + 2  # soft boundary conditions add the two end points
    phases = {
        f"activations of {cfg.collocation_points} collocation points": (
            TAYLOR_TENSORS * points * units * size if cfg.adam_steps or cfg.lbfgs_steps else 0
        ),
        f"L-BFGS's history of {cfg.lbfgs_history}": (
            2 * cfg.lbfgs_history * weights * size if cfg.lbfgs_steps else 0
        ),
        "Levenberg-Marquardt's Jacobian and normal matrix": (
            (3 * points * weights + 4 * weights**2 + TAYLOR_TENSORS * points * units) * size
            if cfg.lm_steps
            else 0
        ),
        f"evaluation at {cfg.eval_points} points": 3 * cfg.eval_points * units * size,
    }
    largest = max(phases, key=phases.__getitem__)
    return Need(
        what=f"pinn.hidden_sizes {cfg.hidden_sizes} ({weights / 1e6:,.0f} M weights)"
        if weights >= 1e6
        else f"pinn.hidden_sizes {cfg.hidden_sizes} with {cfg.collocation_points} points",
        parts={"weights, gradients and Adam state": 4 * weights * size, largest: phases[largest]},
        hint="use fewer or narrower layers, or pinn.lm_steps: 0"
        if largest.startswith("Levenberg")
        else "use fewer or narrower layers or fewer points",
    )


def check_budget(params: Any) -> torch.device:
    """Refuse, in one line, a PINN run this machine cannot hold (the PINN solves on the CPU);
    the device param must still name a device it has."""
    check_device(params.device)
    cpu = torch.device("cpu")
    check_memory(estimate(params.pinn), cpu)
    return cpu
