"""The tutorial's math demos, each returning what it computed and the analytic answer it must match:
tensors, autograd, gradient descent, a custom autograd Function and device selection here, the
linear algebra, FFT and QP in `appliedtorch.demos.linalg`; `run_all` runs them all.

    >>> from appliedtorch.demos.params import MathParams
    >>> results = run_all(MathParams(), device="cpu")
    >>> max(r.error for r in results) < 1e-6
    True

Every demo works in float64, so that its error measures the method rather than float32 rounding.
Where the tutorial's code is wrong the demo does it right, and a comment says what was fixed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from appliedtorch.core.errors import DivergenceError
from appliedtorch.core.utils import error_digits, resolve_device
from appliedtorch.demos.linalg import (  # noqa: F401 - the demos' one namespace: checks.<demo>
    FFT_TONES,
    LINALG_A,
    LINALG_B,
    eig_demo,
    fft_demo,
    inverse_demo,
    qp_demo,
    solve_demo,
    svd_demo,
)
from appliedtorch.demos.params import MathParams
from appliedtorch.demos.result import DTYPE, DemoResult, make_result

log = logging.getLogger(__name__)


# --- 1. tensors and NumPy interop -----------------------------------------------------------


def tensors_demo() -> DemoResult:
    """Tensor algebra, and NumPy views that share memory with tensors (shown by mutating them)."""
    m = torch.arange(6, dtype=DTYPE).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]
    matvec = m @ torch.ones(3, dtype=DTYPE)
    broadcast = m + torch.tensor([10.0, 20.0, 30.0], dtype=DTYPE)

    # Shared memory is shown, not assumed: change one side in place, then read the other side.
    t = torch.ones(3, dtype=DTYPE)
    view = t.numpy()  # shares t's storage
    t.add_(1)
    numpy_after_torch_add = view.copy()
    arr = np.ones(3)
    from_numpy = torch.from_numpy(arr)  # shares arr's buffer
    arr *= 3
    torch_after_numpy_mul = from_numpy.clone()
    copied = torch.tensor(arr)  # torch.tensor copies, so later changes to arr do not reach it
    arr += 1
    return make_result(
        "tensors",
        {
            "matvec": matvec,
            "broadcast": broadcast,
            "numpy_after_torch_add": numpy_after_torch_add,
            "torch_after_numpy_mul": torch_after_numpy_mul,
            "copy_after_numpy_add": copied,
        },
        {
            "matvec": [3.0, 12.0],
            "broadcast": [[10.0, 21.0, 32.0], [13.0, 24.0, 35.0]],
            "numpy_after_torch_add": [2.0, 2.0, 2.0],
            "torch_after_numpy_mul": [3.0, 3.0, 3.0],
            "copy_after_numpy_add": [3.0, 3.0, 3.0],
        },
    )


# --- 2. autograd ----------------------------------------------------------------------------


def gradients_demo(x0: float = 2.0, y0: float = 3.0) -> DemoResult:
    """Gradient of f(x, y) = x^2 y + y + 2 by backward(), against (2xy, x^2 + 1)."""
    x = torch.tensor(x0, dtype=DTYPE, requires_grad=True)
    y = torch.tensor(y0, dtype=DTYPE, requires_grad=True)
    f = x**2 * y + y + 2
    f.backward()
    return make_result(
        "gradients",
        {"f": f, "grad": [x.grad, y.grad]},
        {"f": x0**2 * y0 + y0 + 2, "grad": [2 * x0 * y0, x0**2 + 1]},  # (12, 5) at (2, 3)
    )


def vjp_demo(x0: Sequence[float] = (1.0, 2.0), v: Sequence[float] = (1.0, 1.0)) -> DemoResult:
    """Vector-Jacobian product v^T J of y = (x0^2 + x1, x0 x1) by backward(v)."""
    x = torch.tensor(x0, dtype=DTYPE, requires_grad=True)
    # The tutorial builds y with torch.tensor([...]): that copies the values and drops the graph,
    # so backward() fails. torch.stack keeps y connected to x.
    y = torch.stack([x[0] ** 2 + x[1], x[0] * x[1]])
    y.backward(torch.tensor(v, dtype=DTYPE))
    a, b = x0
    jacobian = np.array([[2 * a, 1.0], [b, a]])
    return make_result(
        "vjp", {"vjp": x.grad}, {"vjp": np.asarray(v) @ jacobian}
    )  # (4, 2) at (1, 2)


# --- 3. gradient descent --------------------------------------------------------------------

GD_X_STAR = 9 / 4  # f'(x) = x^2 (4x - 9): the only minimum is at 9/4
GD_F_STAR = -6.54296875  # f(9/4) = 6561/256 - 2187/64 + 2


def quartic(x: Any) -> Any:
    """f(x) = x^4 - 3x^3 + 2 (tensors or NumPy arrays)."""
    return x**4 - 3 * x**3 + 2


def gradient_descent(start: float, lr: float, max_steps: int, tol: float) -> dict[str, Any]:
    """Minimise `quartic` from `start` with autograd gradients until |f'(x)| <= tol."""
    x = torch.tensor(start, dtype=DTYPE, requires_grad=True)
    warnings: list[str] = []
    (g,) = torch.autograd.grad(quartic(x), x, create_graph=True)
    (curvature,) = torch.autograd.grad(g, x)
    if not math.isfinite(g.item()):  # x0^3 past float64's range: no first step to take
        raise DivergenceError(
            f"gradient descent cannot start at math.gd_start = {start:g}: f'(x0) overflows "
            "float64; start nearer the minimum 9/4, e.g. 3.0"
        )
    if abs(g.item()) <= tol and curvature.item() <= 0:
        # The tutorial starts at x = 0, where f'(0) = f''(0) = 0: descent never moves from there.
        msg = (
            f"gradient descent starts at a stationary point x0 = {start:g} (f'(x0) = {g.item():.3g},"
            " not a minimum), so it cannot move; set math.gd_start elsewhere, e.g. 3.0"
        )
        log.warning(msg)
        warnings.append(msg)
    path, steps = [start], 0
    while abs(g.item()) > tol and steps < max_steps:
        with torch.no_grad():
            x -= lr * g.detach()
        steps += 1
        if not math.isfinite(x.item()):
            raise DivergenceError(
                f"gradient descent diverged at step {steps} (x = {x.item()}); lower math.gd_lr"
            )
        path.append(x.item())
        (g,) = torch.autograd.grad(quartic(x), x)
        if not math.isfinite(g.item()):  # an overshoot so far that f'(x) overflows
            raise DivergenceError(
                f"gradient descent diverged at step {steps} (f'(x) overflows at x = "
                f"{x.item():g}); lower math.gd_lr"
            )
    return {
        "x": x.item(),
        "grad": g.item(),
        "steps": steps,
        "converged": abs(g.item()) <= tol,
        "path": path,
        "warnings": warnings,
    }


def gradient_descent_demo(cfg: MathParams) -> DemoResult:
    """Gradient descent on x^4 - 3x^3 + 2, against x* = 9/4, f* = -6.54296875."""
    run = gradient_descent(cfg.gd_start, cfg.gd_lr, cfg.gd_steps, cfg.gd_tol)
    if not run["converged"]:
        log.warning(
            "gradient descent stopped after %d steps with |f'(x)| = %.3g > math.gd_tol = %g",
            run["steps"],
            abs(run["grad"]),
            cfg.gd_tol,
        )
    return make_result(
        "gd",
        {"x": run["x"], "f": quartic(torch.tensor(run["x"], dtype=DTYPE))},
        {"x": GD_X_STAR, "f": GD_F_STAR},
        tol=1e-6,
        details=run,
    )


# --- 7. a custom autograd Function ----------------------------------------------------------


class Cubic(torch.autograd.Function):
    """y = x^3 with a hand-written backward, dy/dx = 3x^2."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output * 3 * x**2  # differentiable too, so double backward works


def cubic_demo() -> DemoResult:
    """Cubic.apply against x^3 and 3x^2, and torch.autograd.gradcheck / gradgradcheck in float64."""
    x = torch.linspace(-2, 2, 9, dtype=DTYPE, requires_grad=True)
    y = Cubic.apply(x)
    y.sum().backward()
    probe = torch.tensor([-1.3, -0.2, 0.7, 1.9], dtype=DTYPE, requires_grad=True)
    checks = [
        torch.autograd.gradcheck(Cubic.apply, (probe,), raise_exception=False),
        torch.autograd.gradgradcheck(Cubic.apply, (probe,), raise_exception=False),
    ]
    xd = x.detach()
    return make_result(
        "cubic",
        {"forward": y, "grad": x.grad, "gradcheck": checks},
        {"forward": xd**3, "grad": 3 * xd**2, "gradcheck": [1.0, 1.0]},
    )


# --- 8. device selection --------------------------------------------------------------------


def device_demo(device: str = "auto") -> DemoResult:
    """Pick the device from the `device` param and compute on it: sum of squares of 1..4 is 30."""
    dev = resolve_device(device)
    log.info("device: %s -> %s", device, dev)
    x = torch.arange(1, 5, dtype=torch.float32, device=dev)  # float32: every backend has it
    return make_result(
        "device",
        {"sum_of_squares": (x * x).sum()},
        {"sum_of_squares": 30.0},
        tol=0.0,
        details={"device": str(dev)},
    )


# --- all of them ----------------------------------------------------------------------------


def run_all(cfg: MathParams, device: str = "auto") -> list[DemoResult]:
    """Run every demo in the tutorial's order (device selection last)."""
    return [
        tensors_demo(),
        gradients_demo(),
        vjp_demo(),
        gradient_descent_demo(cfg),
        solve_demo(),
        eig_demo(),
        svd_demo(),
        inverse_demo(),
        fft_demo(cfg.fft_sample_rate, cfg.fft_duration),
        cubic_demo(),
        qp_demo(),
        device_demo(device),
    ]


def summary_metrics(results: Sequence[DemoResult]) -> dict[str, float]:
    """Flat metrics: `<demo>.error` for each demo, `max_error`, and a few headline values."""
    out: dict[str, float] = {f"{r.name}.error": r.error for r in results}
    out["max_error"] = max(r.error for r in results)
    out["max_error_digits"] = error_digits(out["max_error"])
    out["failed_demos"] = sum(not r.ok for r in results)
    by_name = {r.name: r for r in results}
    if "gd" in by_name:
        gd = by_name["gd"]
        out |= {
            "gd.x": gd.computed["x"][0],
            "gd.f": gd.computed["f"][0],
            "gd.steps": gd.details["steps"],
            "gd.converged": int(gd.details["converged"]),
        }
    if "fft" in by_name:
        fft = by_name["fft"]
        peaks = zip(fft.computed["peak_hz"], fft.computed["amplitude"], strict=True)
        for i, (hz, amp) in enumerate(peaks, 1):
            out |= {f"fft.peak{i}_hz": hz, f"fft.peak{i}_amplitude": amp}
    if "qp" in by_name:
        out["qp.lambda"] = by_name["qp"].computed["lambda"][0]
    return out


HEADLINE = ("max_error_digits", "failed_demos")  # max_error itself: demos.json


def split_metrics(metrics: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics.json, demos.json): the worst error, its correct digits and the failures first;
    each demo's error and values in their own file."""
    headline = {k: metrics[k] for k in HEADLINE}
    return headline, {k: v for k, v in metrics.items() if k not in HEADLINE}


def format_table(results: Sequence[DemoResult]) -> str:
    """A short text table: demo, error, tolerance, ok."""
    lines = [f"{'demo':<10} {'error':>9} {'tol':>7}  ok"]
    lines += [
        f"{r.name:<10} {r.error:9.2e} {r.tol:7.0e}  {'yes' if r.ok else 'NO'}" for r in results
    ]
    return "\n".join(lines)
