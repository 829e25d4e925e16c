"""Physics-informed network for u'' + u = 0 on [0, π/2], u(0) = 0, u(π/2) = 1 (exact: sin x).

    >>> from appliedtorch.pinn.params import PINNParams
    >>> from appliedtorch.pinn import evaluate, solve
    >>> cfg = PINNParams(boundary="hard", dtype="float64", collocation_points=200,
    ...                  adam_steps=300, lm_steps=300)
    >>> evaluate(solve(cfg).net)["max_abs_error"] < 1e-6
    True

The tutorial trains a 1-10-10-1 tanh net with Adam on a penalty (soft) boundary loss in float32
and stops at a max error of about 1e-3 to 5e-3. `solve` keeps that recipe reachable by params
and adds what makes the same network accurate: float64, an ansatz that satisfies both boundary
conditions exactly (hard), resampled collocation points for Adam, then L-BFGS, then a
Levenberg-Marquardt (damped Gauss-Newton) polish on the residual least-squares problem. The
last step is what reaches 1e-8: torch's L-BFGS stalls between 1e-6 and 1e-5 on this
ill-conditioned loss, even after 3,000 steps.

The network is tiny (141 weights), so every step is dominated by per-op overhead: it always runs on
the CPU, by default on one thread (more threads only add synchronisation).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from appliedtorch.core.utils import thread_count
from appliedtorch.pinn import optim
from appliedtorch.pinn.params import PINNParams
from appliedtorch.pinn.problem import (
    A,
    B,
    PINNNet,
    ansatz,
    boundary_points,
    grid,
    layer_pairs,
    pinn_loss,
    taylor,
    torch_dtype,
)

log = logging.getLogger(__name__)


@dataclass
class PINNResult:
    """What `solve` returns: the trained net, the loss at every step and where the time went."""

    net: PINNNet
    loss: list[float] = field(default_factory=list)  # one value per step, all phases in order
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> [start, end) of loss
    seconds: dict[str, float] = field(default_factory=dict)  # per phase, and "total"
    lbfgs_restarts: int = 0

    def steps(self, phase: str) -> int:
        """Number of steps a phase took (0 when it did not run)."""
        start, end = self.phases.get(phase, (0, 0))
        return end - start


def _adam(net: PINNNet, cfg: PINNParams, dtype: torch.dtype, losses: list[float]) -> None:
    """Adam on the collocation loss; fresh uniform random points every `resample_every` steps."""
    x = grid(cfg.collocation_points, dtype)  # the tutorial's fixed grid when resample_every == 0

    def loss_at(step: int) -> Tensor:
        nonlocal x
        if cfg.resample_every and step % cfg.resample_every == 0:
            x = A + (B - A) * torch.rand(cfg.collocation_points, 1, dtype=dtype)
        return pinn_loss(net, x, cfg.bc_weight)

    optim.adam(list(net.parameters()), loss_at, cfg.adam_steps, cfg.lr, losses)


def _lbfgs(net: PINNNet, cfg: PINNParams, x: Tensor, result: PINNResult) -> None:
    """L-BFGS on a fixed grid; the number of restarts goes to `result.lbfgs_restarts`."""
    result.lbfgs_restarts = optim.lbfgs(
        list(net.parameters()),
        lambda: pinn_loss(net, x, cfg.bc_weight),
        cfg.lbfgs_steps,
        result.loss,
        history=cfg.lbfgs_history,
        tolerance_grad=cfg.lbfgs_tolerance_grad,
        tolerance_change=cfg.lbfgs_tolerance_change,
        restarts=cfg.lbfgs_restarts,
    )


def residual_vector(
    boundary: str, layers: list[tuple[Tensor, Tensor]], x: Tensor, bc_weight: float
) -> Tensor:
    """The residuals R whose sum of squares is the loss: (u'' + u)/√N, then √w·(u - g) at A, B."""
    n = x.shape[0] - (2 if boundary == "soft" else 0)
    u, uxx = ansatz(boundary, x, *taylor(layers, x))
    r = (uxx[:n] + u[:n]).squeeze(1) / math.sqrt(n)
    if boundary == "soft":
        _, ub = boundary_points(x.dtype)
        r = torch.cat([r, math.sqrt(bc_weight) * (u[n:] - ub).squeeze(1)])
    return r


def _lm(net: PINNNet, cfg: PINNParams, x: Tensor, losses: list[float]) -> None:
    """Levenberg-Marquardt on the residual vector (soft: the boundary points are rows too)."""
    if net.boundary == "soft":
        x = torch.cat([x, boundary_points(x.dtype)[0]])
    optim.levenberg_marquardt(
        list(net.parameters()),
        lambda ts: residual_vector(net.boundary, layer_pairs(ts), x, cfg.bc_weight),
        x.shape[0],
        cfg.lm_steps,
        losses,
    )


def solve(cfg: PINNParams, net: PINNNet | None = None) -> PINNResult:
    """Train a PINN for the problem: Adam, then L-BFGS, then Levenberg-Marquardt, per `cfg`."""
    # Set the thread count before torch does any work here: building even this tiny net under
    # the default count starts a thread pool whose spinning workers slow every later step.
    with thread_count(cfg.num_threads):
        return _solve(cfg, net)


def _solve(cfg: PINNParams, net: PINNNet | None) -> PINNResult:
    dtype = torch_dtype(cfg.dtype)
    net = net or PINNNet(cfg.hidden_sizes, cfg.boundary, dtype)
    result = PINNResult(net=net)
    fixed = grid(cfg.collocation_points, dtype)  # L-BFGS and L-M need one deterministic loss
    weights = sum(p.numel() for p in net.parameters())
    if cfg.lm_steps and cfg.collocation_points <= weights:
        log.warning(
            "pinn.collocation_points (%d) <= number of weights (%d): Levenberg-Marquardt fits "
            "the points but not the ODE between them; use more points",
            cfg.collocation_points,
            weights,
        )

    def phase(name: str, run: Callable[[], object]) -> None:
        start, tic = len(result.loss), time.perf_counter()
        run()
        result.phases[name] = (start, len(result.loss))
        result.seconds[name] = time.perf_counter() - tic
        last = result.loss[-1] if len(result.loss) > start else float("nan")
        steps = len(result.loss) - start
        log.info("%s: %d steps, loss %.3e, %.2f s", name, steps, last, result.seconds[name])

    total = time.perf_counter()
    if cfg.adam_steps:
        phase("adam", lambda: _adam(net, cfg, dtype, result.loss))
    if cfg.lbfgs_steps:
        phase("lbfgs", lambda: _lbfgs(net, cfg, fixed, result))
    if cfg.lm_steps:
        phase("lm", lambda: _lm(net, cfg, fixed, result.loss))
    result.seconds["total"] = time.perf_counter() - total
    return result
