"""The tutorial's math demos, each returning what it computed and the analytic answer it must match.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from appliedtorch.core.errors import DivergenceError
from appliedtorch.core.utils import resolve_device
from appliedtorch.demos.params import MathParams

log = logging.getLogger(__name__)

DTYPE = torch.float64
Values = Mapping[str, Any]  # name -> tensor, array, sequence or scalar


@dataclass(frozen=True)
class DemoResult:
    """One demo: named computed values, the analytic values they are checked against, extras."""

    name: str
    computed: dict[str, list[float]]
    expected: dict[str, list[float]]
    tol: float = 1e-9  # the error this demo stays under with the default params
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> float:
        """max |computed - expected| over every value of the demo."""
        return max(
            float(np.max(np.abs(np.subtract(self.computed[k], self.expected[k]))))
            for k in self.expected
        )

    @property
    def ok(self) -> bool:
        """Whether the error is within the demo's tolerance."""
        return self.error <= self.tol


def _floats(value: Any) -> list[float]:
    """A tensor, array, sequence or scalar as a flat list of floats."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return [float(v) for v in np.ravel(np.asarray(value, dtype=float))]


def _result(name: str, computed: Values, expected: Values, **kwargs: Any) -> DemoResult:
    if computed.keys() != expected.keys():
        raise ValueError(f"demo {name}: computed and expected values have different names")
    got = {k: _floats(v) for k, v in computed.items()}
    want = {k: _floats(v) for k, v in expected.items()}
    for k in want:
        if len(got[k]) != len(want[k]):
            raise ValueError(
                f"demo {name}: '{k}' has {len(got[k])} values, expected {len(want[k])}"
            )
    return DemoResult(name, got, want, **kwargs)


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
    return _result(
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
    return _result(
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
    return _result("vjp", {"vjp": x.grad}, {"vjp": np.asarray(v) @ jacobian})  # (4, 2) at (1, 2)


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
    return _result(
        "gd",
        {"x": run["x"], "f": quartic(run["x"])},
        {"x": GD_X_STAR, "f": GD_F_STAR},
        tol=1e-6,
        details=run,
    )


# --- 4. linear algebra (torch.linalg) -------------------------------------------------------

# The tutorial's int matrix fails in `A @ v[:2]` against float eigenvectors: use float64 from the start.
LINALG_A = ((3.0, 1.0), (1.0, 2.0))
LINALG_B = (9.0, 8.0)  # 3x + y = 9, x + 2y = 8  ->  x = (2, 3)


def _a() -> torch.Tensor:
    return torch.tensor(LINALG_A, dtype=DTYPE)


def solve_demo() -> DemoResult:
    """torch.linalg.solve, against x = (2, 3) and a zero residual Ax - b."""
    a, b = _a(), torch.tensor(LINALG_B, dtype=DTYPE)
    x = torch.linalg.solve(a, b)
    return _result(
        "solve", {"x": x, "residual": a @ x - b}, {"x": [2.0, 3.0], "residual": [0.0, 0.0]}
    )


def eig_demo() -> DemoResult:
    """torch.linalg.eig, against (5 -+ sqrt 5)/2 and a zero residual AV - V diag(w)."""
    a = _a()
    w, v = torch.linalg.eig(a)  # complex in general
    order = torch.argsort(w.real)
    residual = a.to(v.dtype) @ v - v * w  # column j: A v_j - w_j v_j
    root5 = math.sqrt(5)
    return _result(
        "eig",
        {"eigenvalues": w.real[order], "imag": w.imag, "residual": residual.abs()},
        {"eigenvalues": [(5 - root5) / 2, (5 + root5) / 2], "imag": [0, 0], "residual": [0] * 4},
    )


def svd_demo() -> DemoResult:
    """torch.linalg.svd (torch.svd is deprecated), checked by reconstruction and orthogonality."""
    a = _a()
    u, s, vh = torch.linalg.svd(a)
    eye = torch.eye(2, dtype=DTYPE)
    root5 = math.sqrt(5)
    return _result(
        "svd",
        {  # A is symmetric positive definite: its singular values are its eigenvalues
            "singular_values": s,
            "reconstruction": u @ torch.diag(s) @ vh - a,
            "orthogonality": torch.cat([u.T @ u - eye, vh @ vh.T - eye]),
        },
        {
            "singular_values": [(5 + root5) / 2, (5 - root5) / 2],
            "reconstruction": [0] * 4,
            "orthogonality": [0] * 8,
        },
    )


def inverse_demo() -> DemoResult:
    """torch.linalg.inv, against the adjugate formula and a zero residual A A^-1 - I."""
    a = _a()
    inv = torch.linalg.inv(a)
    return _result(
        "inverse",
        {"inverse": inv, "residual": a @ inv - torch.eye(2, dtype=DTYPE)},
        {"inverse": np.array([[2.0, -1.0], [-1.0, 3.0]]) / 5, "residual": [0] * 4},
    )


# --- 6. FFT ---------------------------------------------------------------------------------

FFT_TONES = ((5.0, 1.0), (10.0, 0.5))  # (Hz, amplitude): sin(2 pi 5 t) + 0.5 sin(2 pi 10 t)


def fft_demo(sample_rate: float, duration: float) -> DemoResult:
    """One-sided amplitude spectrum of the two-tone signal, against its frequencies and amplitudes."""
    n = round(sample_rate * duration)
    # The tutorial samples with linspace(0, 1, N), which includes the endpoint: the spacing is
    # 1/(N-1), not the 1/fs its frequency axis assumes. t = k/fs and rfftfreq keep the two in step.
    t = torch.arange(n, dtype=DTYPE) / sample_rate
    signal = sum(a * torch.sin(2 * math.pi * f * t) for f, a in FFT_TONES)
    freqs = torch.fft.rfftfreq(n, d=1 / sample_rate, dtype=DTYPE)
    amplitude = 2 * torch.fft.rfft(signal).abs() / n
    amplitude[0] /= 2  # DC (and Nyquist, for even n) have no mirror image to fold in
    if n % 2 == 0:
        amplitude[-1] /= 2
    bins = [f * n / sample_rate for f, _ in FFT_TONES]
    if any(abs(k - round(k)) > 1e-9 for k in bins):
        log.warning(
            "the FFT window (%d samples at %g Hz) does not hold whole cycles of %s Hz: "
            "expect leakage; a math.fft_duration of whole seconds avoids it",
            n,
            sample_rate,
            " and ".join(f"{f:g}" for f, _ in FFT_TONES),
        )
    peaks = torch.topk(amplitude, len(FFT_TONES)).indices.sort().values
    others = amplitude.clone()
    others[peaks] = 0
    return _result(
        "fft",
        {"peak_hz": freqs[peaks], "amplitude": amplitude[peaks], "leakage": others.max()},
        {
            "peak_hz": [f for f, _ in FFT_TONES],
            "amplitude": [a for _, a in FFT_TONES],
            "leakage": 0.0,
        },
        details={"freqs": _floats(freqs), "amplitude": _floats(amplitude), "samples": n},
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
    return _result(
        "cubic",
        {"forward": y, "grad": x.grad, "gradcheck": checks},
        {"forward": xd**3, "grad": 3 * xd**2, "gradcheck": [1.0, 1.0]},
    )


# --- 9. equality-constrained QP by KKT ------------------------------------------------------

# min 1/2 x^T Q x + c^T x  s.t.  A x = b
QP_Q = ((2.0, 0.0), (0.0, 4.0))
QP_C = (1.0, 1.0)
QP_A = ((1.0, 1.0),)
QP_B = (1.0,)


def qp_demo() -> DemoResult:
    """Solve [[Q, A^T], [A, 0]] [x; lam] = [-c; b], against x* = (2/3, 1/3), lam* = -7/3."""
    q, c = torch.tensor(QP_Q, dtype=DTYPE), torch.tensor(QP_C, dtype=DTYPE)
    a, b = torch.tensor(QP_A, dtype=DTYPE), torch.tensor(QP_B, dtype=DTYPE)
    n, m = q.shape[0], a.shape[0]
    kkt = torch.cat(
        [torch.cat([q, a.T], dim=1), torch.cat([a, torch.zeros(m, m, dtype=DTYPE)], dim=1)]
    )
    sol = torch.linalg.solve(kkt, torch.cat([-c, b]))
    x, lam = sol[:n], sol[n:]
    # Analytic: 2 x1 + lam = -1, 4 x2 + lam = -1, x1 + x2 = 1  ->  x1 = 2 x2 = 2/3, lam = -7/3.
    return _result(
        "qp",
        {
            "x": x,
            "lambda": lam,
            "objective": 0.5 * x @ q @ x + c @ x,
            "stationarity": q @ x + c + a.T @ lam,
            "feasibility": a @ x - b,
        },
        {
            "x": [2 / 3, 1 / 3],
            "lambda": [-7 / 3],
            "objective": 5 / 3,
            "stationarity": [0.0, 0.0],
            "feasibility": [0.0],
        },
    )


# --- 8. device selection --------------------------------------------------------------------


def device_demo(device: str = "auto") -> DemoResult:
    """Pick the device from the `device` param and compute on it: sum of squares of 1..4 is 30."""
    dev = resolve_device(device)
    log.info("device: %s -> %s", device, dev)
    x = torch.arange(1, 5, dtype=torch.float32, device=dev)  # float32: every backend has it
    return _result(
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


def format_table(results: Sequence[DemoResult]) -> str:
    """A short text table: demo, error, tolerance, ok."""
    lines = [f"{'demo':<10} {'error':>9} {'tol':>7}  ok"]
    lines += [
        f"{r.name:<10} {r.error:9.2e} {r.tol:7.0e}  {'yes' if r.ok else 'NO'}" for r in results
    ]
    return "\n".join(lines)
