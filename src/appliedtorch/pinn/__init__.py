"""The physics-informed network for u'' + u = 0 on [0, π/2], u(0) = 0, u(π/2) = 1 (exact: sin x).

    python stages/pinn.py --params params.yaml --model models/pinn.pt --reports reports/pinn

`problem` states the ODE as named pieces, `solver` trains the network (Adam, L-BFGS,
Levenberg-Marquardt), `outputs` checks it against sin x and writes the model and reports.
"""

from appliedtorch.pinn.outputs import (
    evaluate,
    input_example,
    load_pinn,
    loss_log_points,
    save_pinn,
    save_verified,
    summary_metrics,
    write_reports,
)
from appliedtorch.pinn.problem import (
    A,
    B,
    PINNNet,
    boundary_loss,
    exact_solution,
    grid,
    pinn_loss,
    residual,
)
from appliedtorch.pinn.solver import PINNResult, solve

__all__ = [
    "A",
    "B",
    "PINNNet",
    "PINNResult",
    "boundary_loss",
    "evaluate",
    "exact_solution",
    "grid",
    "input_example",
    "load_pinn",
    "loss_log_points",
    "pinn_loss",
    "residual",
    "save_pinn",
    "save_verified",
    "solve",
    "summary_metrics",
    "write_reports",
]
