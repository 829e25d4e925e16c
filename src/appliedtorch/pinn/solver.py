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

from appliedtorch.core.errors import DivergenceError
from appliedtorch.core.utils import thread_count
from appliedtorch.pinn.params import PINNParams
from appliedtorch.pinn.problem import (
    A,
    B,
    PINNNet,
    ansatz,
    boundary_points,
    grid,
    pinn_loss,
    taylor,
    torch_dtype,
)

log = logging.getLogger(__name__)

# Levenberg-Marquardt damping: shrink after an accepted step, grow after a rejected one; a damping
# this large (relative to the Gauss-Newton diagonal) means no step lowers the loss any more.
_LM_DOWN, _LM_UP, _LM_MAX = 3.0, 2.0, 1e12


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


def _check(loss: float, phase: str, step: int, hint: str) -> None:
    if not math.isfinite(loss):
        raise DivergenceError(f"pinn: loss became {loss} at {phase} step {step}; {hint}")


def _adam(net: PINNNet, cfg: PINNParams, dtype: torch.dtype, losses: list[float]) -> None:
    """Adam on the collocation loss; fresh uniform random points every `resample_every` steps."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    x = grid(cfg.collocation_points, dtype)  # the tutorial's fixed grid when resample_every == 0
    for step in range(cfg.adam_steps):
        if cfg.resample_every and step % cfg.resample_every == 0:
            x = A + (B - A) * torch.rand(cfg.collocation_points, 1, dtype=dtype)
        opt.zero_grad(set_to_none=True)
        loss = pinn_loss(net, x, cfg.bc_weight)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        _check(losses[-1], "adam", step, "lower pinn.lr")


def _lbfgs(net: PINNNet, cfg: PINNParams, x: Tensor, result: PINNResult) -> None:
    """L-BFGS (strong Wolfe) on a fixed grid, restarted with a fresh history if it stops early.

    torch's L-BFGS also stops when a line search makes no progress, which happens long before
    `max_iter` on this loss; a restart from the same point with an empty history usually moves
    on. One loss per iteration: the best point its line search evaluated (the one L-BFGS
    accepts); the number of restarts goes to `result.lbfgs_restarts`.
    """
    losses, params = result.loss, list(net.parameters())
    restarts, remaining = 0, cfg.lbfgs_steps
    while remaining > 0:
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=remaining,
            max_eval=10 * remaining + 10,  # the default, 1.25 x max_iter, cuts it short
            tolerance_grad=cfg.lbfgs_tolerance_grad,
            tolerance_change=cfg.lbfgs_tolerance_change,
            history_size=cfg.lbfgs_history,
            line_search_fn="strong_wolfe",
        )
        per_iter: dict[int, float] = {}  # iteration -> best loss its line search saw
        backup = [p.detach().clone() for p in params]

        def closure(opt: torch.optim.LBFGS = opt, per_iter: dict[int, float] = per_iter) -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = pinn_loss(net, x, cfg.bc_weight)
            loss.backward()
            it, value = opt.state[params[0]].get("n_iter", 0), loss.item()
            if math.isfinite(value):
                per_iter[it] = min(value, per_iter.get(it, math.inf))
            return loss

        opt.step(closure)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            with torch.no_grad():  # a line search ran into overflow: keep the last good point
                for p, b in zip(params, backup, strict=True):
                    p.copy_(b)
            log.warning("L-BFGS produced non-finite weights; kept the last good ones")
            break
        iters = opt.state[params[0]].get("n_iter", 0)
        losses.extend(per_iter[i] for i in range(1, iters + 1) if i in per_iter)
        remaining -= iters
        if remaining <= 0 or iters < 2 or restarts >= cfg.lbfgs_restarts:
            break  # done, or even a fresh start cannot move: converged as far as L-BFGS goes
        restarts += 1
        log.debug("L-BFGS stopped after %d iterations; restart %d", iters, restarts)
    result.lbfgs_restarts = restarts


def _residual_vector(
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
    """Levenberg-Marquardt on the residual vector, with the Jacobian from one backward pass.

    Each residual depends on its own point only, so giving every point its own copy of the
    weights and back-propagating the sum yields all rows of the (rows, weights) Jacobian at once.
    """
    if net.boundary == "soft":
        x = torch.cat([x, boundary_points(x.dtype)[0]])
    rows = x.shape[0]
    lins = net.linears
    with torch.no_grad():
        theta = torch.cat([t.reshape(-1) for m in lins for t in (m.weight, m.bias)])
    shapes = [t.shape for m in lins for t in (m.weight, m.bias)]
    sizes = [math.prod(s) for s in shapes]

    def unflatten(v: Tensor) -> list[Tensor]:
        return [t.view(s) for t, s in zip(torch.split(v, sizes), shapes, strict=True)]

    def pairs(ts: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        return list(zip(ts[0::2], ts[1::2], strict=True))  # (weight, bias) per layer

    def residuals(v: Tensor) -> Tensor:
        with torch.no_grad():
            return _residual_vector(net.boundary, pairs(unflatten(v)), x, cfg.bc_weight)

    def jacobian(v: Tensor) -> tuple[Tensor, Tensor]:
        per_sample = [t.expand(rows, *t.shape).clone().requires_grad_(True) for t in unflatten(v)]
        r = _residual_vector(net.boundary, pairs(per_sample), x, cfg.bc_weight)
        r.sum().backward()
        return r.detach(), torch.cat([p.grad.reshape(rows, -1) for p in per_sample], dim=1)

    r, jac = jacobian(theta)
    loss = float(r @ r)
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    gram = jac.T @ jac
    scale = max(float(gram.diagonal().mean()), torch.finfo(theta.dtype).tiny)
    mu = 1e-3 * scale
    for step in range(cfg.lm_steps):
        grad = jac.T @ r
        while mu < _LM_MAX * scale:
            try:
                delta = torch.linalg.solve(gram + mu * eye, -grad)
            except RuntimeError:  # singular or non-finite system: damp harder
                mu *= _LM_UP
                continue
            r_new = residuals(theta + delta)
            loss_new = float(r_new @ r_new)
            if loss_new < loss:  # NaN compares false: treated as a rejected step
                theta, loss, mu = theta + delta, loss_new, mu / _LM_DOWN
                break
            mu *= _LM_UP
        else:
            log.info("Levenberg-Marquardt converged after %d steps (no step lowers the loss)", step)
            break
        losses.append(loss)
        r, jac = jacobian(theta)
        gram = jac.T @ jac
    with torch.no_grad():
        for p, t in zip(net.parameters(), torch.split(theta, sizes), strict=True):
            p.copy_(t.view(p.shape))


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
