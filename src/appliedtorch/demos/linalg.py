"""The tutorial's linear-algebra demos (torch.linalg), its FFT and an equality-constrained QP by
its KKT system, each against its analytic answer.

    >>> solve_demo().error < 1e-12
    True
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from appliedtorch.demos.result import DTYPE, DemoResult, as_floats, make_result

log = logging.getLogger(__name__)


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
    return make_result(
        "solve", {"x": x, "residual": a @ x - b}, {"x": [2.0, 3.0], "residual": [0.0, 0.0]}
    )


def eig_demo() -> DemoResult:
    """torch.linalg.eig, against (5 -+ sqrt 5)/2 and a zero residual AV - V diag(w)."""
    a = _a()
    w, v = torch.linalg.eig(a)  # complex in general
    order = torch.argsort(w.real)
    residual = a.to(v.dtype) @ v - v * w  # column j: A v_j - w_j v_j
    root5 = math.sqrt(5)
    return make_result(
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
    return make_result(
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
    return make_result(
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
    return make_result(
        "fft",
        {"peak_hz": freqs[peaks], "amplitude": amplitude[peaks], "leakage": others.max()},
        {
            "peak_hz": [f for f, _ in FFT_TONES],
            "amplitude": [a for _, a in FFT_TONES],
            "leakage": 0.0,
        },
        details={"freqs": as_floats(freqs), "amplitude": as_floats(amplitude), "samples": n},
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
    return make_result(
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
