"""The optimizers every PINN here shares: Adam, L-BFGS with restarts, Levenberg-Marquardt.

    losses: list[float] = []
    adam(params, lambda step: loss_at(step), steps=300, lr=0.01, losses=losses)
    lbfgs(params, loss, steps=100, history=50, losses=losses)
    r, jac = levenberg_marquardt(params, residuals, rows=200, steps=400, losses=losses)

Each takes the tensors it trains and a function that computes the loss (or the residual vector)
from them, so the forward problem, the inverse problem (net weights and k) and the parametric
family run the same code. Each appends one loss per step to `losses` and reports progress
(a bar on a terminal, one log line every few seconds elsewhere), and knows nothing of MLflow.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from appliedtorch.core.errors import DivergenceError

log = logging.getLogger(__name__)

# Levenberg-Marquardt damping: shrink after an accepted step, grow after a rejected one; a damping
# this large (relative to the Gauss-Newton diagonal) means no step lowers the loss any more.
LM_DOWN, LM_UP, LM_MAX = 3.0, 2.0, 1e12

# A log file gets one progress line this often (seconds) during a long phase.
LINE_EVERY_SECONDS = 5.0

StepCallback = Callable[[int], None]


class Steps:
    """`for step in Steps(n, "adam")`: tqdm's bar on a terminal, else a log line every few
    seconds (step, loss, ETA), so a 40 s Adam phase in a log file is not silent."""

    def __init__(self, total: int, phase: str, every: float = LINE_EVERY_SECONDS):
        self.total, self.phase, self.every = total, phase, every
        self.loss = math.nan
        self.lines = not sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=phase, leave=False, mininterval=0.5, disable=self.lines)

    def __iter__(self) -> Iterator[int]:
        start = last = time.monotonic()
        try:
            for step in range(self.total):
                yield step
                self.bar.update(1)
                now = time.monotonic()
                if self.lines and now - last >= self.every and step + 1 < self.total:
                    last = now
                    eta = (now - start) / (step + 1) * (self.total - step - 1)
                    log.info(
                        "%s: step %d/%d, loss %.3e, ETA %.0f s",
                        self.phase,
                        step + 1,
                        self.total,
                        self.loss,
                        eta,
                    )
        finally:
            self.bar.close()


def check_finite(loss: float, what: str, step: int, hint: str) -> None:
    """Stop with one line when a loss stops being a number ("pinn: loss became nan at adam ...")."""
    if not math.isfinite(loss):
        raise DivergenceError(f"{what}: loss became {loss} at step {step}; {hint}")


def adam(
    params: list[Tensor],
    loss_at: Callable[[int], Tensor],
    steps: int,
    lr: float,
    losses: list[float],
    name: str = "pinn",
    on_step: StepCallback | None = None,
) -> None:
    """Adam on `loss_at(step)` (which may draw fresh points at any step)."""
    opt = torch.optim.Adam(params, lr=lr)
    progress = Steps(steps, f"{name} adam")
    for step in progress:
        opt.zero_grad(set_to_none=True)
        loss = loss_at(step)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        progress.loss = losses[-1]
        check_finite(losses[-1], f"{name} adam", step, f"lower {name}.lr")
        if on_step:
            on_step(len(losses) - 1)


def lbfgs(
    params: list[Tensor],
    loss_fn: Callable[[], Tensor],
    steps: int,
    losses: list[float],
    history: int = 50,
    tolerance_grad: float = 0.0,
    tolerance_change: float = 0.0,
    restarts: int = 5,
    on_step: StepCallback | None = None,
) -> int:
    """L-BFGS (strong Wolfe) restarted with a fresh history when it stops early; the restarts.

    torch's L-BFGS also stops when a line search makes no progress, which happens long before
    `max_iter` on these losses; a restart from the same point with an empty history usually
    moves on. One loss per iteration: the best point its line search evaluated (the one L-BFGS
    accepts).
    """
    done, remaining = 0, steps
    while remaining > 0:
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=remaining,
            max_eval=10 * remaining + 10,  # the default, 1.25 x max_iter, cuts it short
            tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change,
            history_size=history,
            line_search_fn="strong_wolfe",
        )
        per_iter: dict[int, float] = {}  # iteration -> best loss its line search saw
        backup = [p.detach().clone() for p in params]

        def closure(opt: torch.optim.LBFGS = opt, per_iter: dict[int, float] = per_iter) -> Tensor:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            it, value = opt.state[params[0]].get("n_iter", 0), loss.item()
            if math.isfinite(value):
                per_iter[it] = min(value, per_iter.get(it, math.inf))
            return loss

        opt.step(closure)
        if _restored(params, backup):
            break
        iters = opt.state[params[0]].get("n_iter", 0)
        for i in range(1, iters + 1):
            if i in per_iter:
                losses.append(per_iter[i])
                if on_step:
                    on_step(len(losses) - 1)
        remaining -= iters
        if remaining <= 0 or iters < 2 or done >= restarts:
            break  # done, or even a fresh start cannot move: converged as far as L-BFGS goes
        done += 1
        log.debug("L-BFGS stopped after %d iterations; restart %d", iters, done)
    return done


def _restored(params: list[Tensor], backup: list[Tensor]) -> bool:
    """Put `backup` back if a line search ran into overflow (non-finite weights); whether it did."""
    if all(bool(torch.isfinite(p).all()) for p in params):
        return False
    with torch.no_grad():
        for p, b in zip(params, backup, strict=True):
            p.copy_(b)
    log.warning("L-BFGS produced non-finite weights; kept the last good ones")
    return True


def flat(params: list[Tensor]) -> Tensor:
    """The tensors as one vector θ, in order."""
    with torch.no_grad():
        return torch.cat([t.reshape(-1) for t in params])


def unflatten(theta: Tensor, like: list[Tensor]) -> list[Tensor]:
    """θ cut back into views shaped like `like`."""
    sizes = [t.numel() for t in like]
    return [v.view(t.shape) for v, t in zip(torch.split(theta, sizes), like, strict=True)]


def levenberg_marquardt(
    params: list[Tensor],
    residuals: Callable[[list[Tensor]], Tensor],
    rows: int,
    steps: int,
    losses: list[float],
    on_step: StepCallback | None = None,
) -> tuple[Tensor, Tensor]:
    """Levenberg-Marquardt on the residual vector; the residuals and Jacobian at the end.

    `residuals(ts)` gets the tensors either shaped as `params` or with a leading per-row axis
    (rows, *shape). Each residual depends on its own row's copy only, so back-propagating the
    sum over copies yields every row of the (rows, weights) Jacobian from one backward pass.
    The trained values are copied into `params` at the end.
    """
    theta = flat(params)
    like = [p.detach() for p in params]

    def values(v: Tensor) -> Tensor:
        with torch.no_grad():
            return residuals(unflatten(v, like))

    def jacobian(v: Tensor) -> tuple[Tensor, Tensor]:
        per_row = [
            t.expand(rows, *t.shape).clone().requires_grad_(True) for t in unflatten(v, like)
        ]
        r = residuals(per_row)
        r.sum().backward()
        return r.detach(), torch.cat([p.grad.reshape(rows, -1) for p in per_row], dim=1)

    r, jac = jacobian(theta)
    loss = float(r @ r)
    gram = jac.T @ jac
    scale = max(float(gram.diagonal().mean()), torch.finfo(theta.dtype).tiny)
    mu = 1e-3 * scale
    progress = Steps(steps, "levenberg-marquardt")
    for step in progress:
        accepted = _damped_step(gram, jac.T @ r, mu, LM_MAX * scale, theta, loss, values)
        if accepted is None:
            log.info("Levenberg-Marquardt converged after %d steps (no step lowers the loss)", step)
            break
        theta, loss, mu = accepted
        losses.append(loss)
        progress.loss = loss
        r, jac = jacobian(theta)
        gram = jac.T @ jac
        if on_step:  # it reads the trained tensors
            with torch.no_grad():
                for p, t in zip(params, unflatten(theta, like), strict=True):
                    p.copy_(t)
            on_step(len(losses) - 1)
    with torch.no_grad():
        for p, t in zip(params, unflatten(theta, like), strict=True):
            p.copy_(t)
    return r, jac


def _damped_step(
    gram: Tensor,
    grad: Tensor,
    mu: float,
    limit: float,
    theta: Tensor,
    loss: float,
    values: Callable[[Tensor], Tensor],
) -> tuple[Tensor, float, float] | None:
    """One accepted L-M step (θ, loss, damping), damping harder until a step lowers the loss;
    None when even damping `limit` does not (converged)."""
    eye = torch.eye(theta.numel(), dtype=theta.dtype)
    while mu < limit:
        try:
            delta = torch.linalg.solve(gram + mu * eye, -grad)
        except RuntimeError:  # singular or non-finite system: damp harder
            mu *= LM_UP
            continue
        r_new = values(theta + delta)
        loss_new = float(r_new @ r_new)
        if loss_new < loss:  # NaN compares false: treated as a rejected step
            return theta + delta, loss_new, mu / LM_DOWN
        mu *= LM_UP
    return None


def run_phases(
    phases: dict[str, Callable[[], object]],
    config: Any,
    result: Any,
    describe: Callable[[str], str],
) -> None:
    """Run each phase with steps (`config.<name>_steps`), in order: its span of `result.loss`
    into `result.phases`, its seconds (and the total's and this process's CPU seconds) into
    `result.seconds`, and one log line, `describe(name)`, after it."""
    loss, seconds = result.loss, result.seconds
    total, cpu = time.perf_counter(), time.process_time()
    for name, run in phases.items():
        if getattr(config, f"{name}_steps"):
            start, tic = len(loss), time.perf_counter()
            run()
            result.phases[name] = (start, len(loss))
            seconds[name] = time.perf_counter() - tic
            log.info("%s", describe(name))
    seconds["total"] = time.perf_counter() - total
    seconds["cpu"] = time.process_time() - cpu  # this process, all threads
