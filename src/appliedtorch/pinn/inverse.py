"""The inverse problem: k in u'' + k·u = 0, u(0) = 0, u(π/2) = 1, from observations of u.

    python stages/pinn_inverse.py --params params.yaml --reports reports/pinn_inverse

`fit` trains the forward problem's hard-boundary net and k together (float64; Adam, L-BFGS, then
Levenberg-Marquardt with k among the parameters) on the residual vector

    [ √(w/N)·(u'' + k·u) at N collocation points ;  (u(x_i) - u_i)/√M at the M observations ]

with w = `pde_weight` large, so the net stays a solution of the ODE and k alone fits the data:
then k̂ is the least-squares estimate on the closed form, which `least_squares_k` computes with
SciPy as the yardstick. The standard error of k̂ comes from the L-M Jacobian at the solution.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import least_squares
from torch import Tensor, nn

from appliedtorch.core.utils import thread_count
from appliedtorch.pinn import optim
from appliedtorch.pinn.problem import K_HIGH, K_LOW, PINNNet, ansatz, closed_form, grid, taylor

log = logging.getLogger(__name__)


@dataclass
class InverseResult:
    """What `fit` returns: the net, k̂ and its standard error, the loss and k̂ at every step."""

    net: PINNNet
    k: float
    k_standard_error: float
    loss: list[float] = field(default_factory=list)
    k_trace: list[float] = field(default_factory=list)  # k̂ after each step, all phases in order
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    data_rms: float = math.nan  # root-mean-square misfit u_net(x_i) - u_i
    pde_rms: float = math.nan  # root-mean-square ODE residual at the collocation points


class Residuals:
    """The residual vector of the joint fit, from [w1, b1, ..., k] as given or per row."""

    def __init__(self, x_obs: Tensor, u_obs: Tensor, collocation: int, pde_weight: float):
        self.n, self.m = collocation, x_obs.shape[0]
        self.x = torch.cat([grid(collocation, x_obs.dtype), x_obs])  # (N + M, 1)
        self.u_obs = u_obs
        self.pde_scale = math.sqrt(pde_weight / self.n)

    @property
    def rows(self) -> int:
        return self.n + self.m

    def __call__(self, tensors: list[Tensor]) -> Tensor:
        weights, k = tensors[:-1], tensors[-1].reshape(-1, 1)  # k: (1, 1) or per row (N + M, 1)
        layers = list(zip(weights[0::2], weights[1::2], strict=True))
        u, uxx = ansatz("hard", self.x, *taylor(layers, self.x))
        n = self.n
        pde = (uxx[:n] + (k[:n] if k.shape[0] > 1 else k) * u[:n]) * self.pde_scale
        data = (u[n:] - self.u_obs) / math.sqrt(self.m)
        return torch.cat([pde, data]).squeeze(1)


def fit(cfg: Any, x_obs: np.ndarray, u_obs: np.ndarray) -> InverseResult:
    """Train the net and k together per the `pinn_inverse` section, on the observations."""
    with thread_count(cfg.num_threads):
        return _fit(cfg, x_obs, u_obs)


def _fit(cfg: Any, x_obs: np.ndarray, u_obs: np.ndarray) -> InverseResult:
    dtype = torch.float64
    net = PINNNet(cfg.hidden_sizes, "hard", dtype)
    k = nn.Parameter(torch.tensor([cfg.k_init], dtype=dtype))
    params = [*net.parameters(), k]
    xo = torch.as_tensor(x_obs, dtype=dtype).reshape(-1, 1)
    uo = torch.as_tensor(u_obs, dtype=dtype).reshape(-1, 1)
    res = Residuals(xo, uo, cfg.collocation_points, cfg.pde_weight)
    result = InverseResult(net=net, k=cfg.k_init, k_standard_error=math.nan)

    def loss() -> Tensor:
        return res(params).pow(2).sum()

    def record(step: int) -> None:
        result.k_trace.append(float(k.detach()))

    final: list[tuple[Tensor, Tensor]] = []
    phases = {
        "adam": lambda: optim.adam(
            params, lambda _: loss(), cfg.adam_steps, cfg.lr, result.loss, "pinn_inverse", record
        ),
        "lbfgs": lambda: optim.lbfgs(params, loss, cfg.lbfgs_steps, result.loss, on_step=record),
        "lm": lambda: final.append(
            optim.levenberg_marquardt(params, res, res.rows, cfg.lm_steps, result.loss, record)
        ),
    }
    optim.run_phases(
        phases,
        cfg,
        result,
        lambda name: f"{name}: k = {float(k.detach()):.9f}, loss {result.loss[-1]:.3e}",
    )
    result.k = float(k.detach())
    with torch.no_grad():
        r = res(params)
    result.pde_rms = float(r[: res.n].pow(2).mean().sqrt()) / res.pde_scale
    result.data_rms = float(r[res.n :].pow(2).sum().sqrt())
    if final:
        result.k_standard_error = standard_error(*final[0], res)
    return result


def standard_error(r: Tensor, jac: Tensor, res: Residuals) -> float:
    """Standard error of k̂ from the Gauss-Newton sandwich at the solution.

    Only the data rows carry noise (variance s² = RSS/(M - 1) before their 1/√M scaling); with
    H = JᵀJ and J_d the data rows, var(k̂) = s²/M · ||J_d H⁻¹ e_k||². When the ODE holds
    exactly this is the closed-form least squares' s²/Σ(∂u_i/∂k)².
    """
    m = res.m
    rss = float(r[res.n :].pow(2).sum()) * m
    s2 = rss / (m - 1)
    e_k = torch.zeros(jac.shape[1], dtype=jac.dtype)
    e_k[-1] = 1
    v = torch.linalg.lstsq(jac.T @ jac, e_k.unsqueeze(1), rcond=None).solution.squeeze(1)
    return math.sqrt(s2 / m) * float((jac[res.n :] @ v).norm())


@dataclass(frozen=True)
class LeastSquaresK:
    """The classical estimate: k minimising Σ (u(x_i; k) - u_i)² on the closed form."""

    k: float
    standard_error: float
    seconds: float


def least_squares_k(x: np.ndarray, u: np.ndarray, k_init: float) -> LeastSquaresK:
    """scipy.optimize.least_squares for k on the closed form, started at k_init, kept in (0, 4)."""
    tic = time.perf_counter()
    margin = 1e-9  # sin(√k·π/2) vanishes at k = 4: keep the bounds open
    fit = least_squares(
        lambda k: closed_form(x, float(k[0])) - u,
        x0=[k_init],
        bounds=([K_LOW + margin], [K_HIGH - margin]),
        x_scale="jac",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    seconds = time.perf_counter() - tic
    s2 = 2 * fit.cost / max(len(x) - 1, 1)
    jtj = float(fit.jac[:, 0] @ fit.jac[:, 0])
    return LeastSquaresK(float(fit.x[0]), math.sqrt(s2 / jtj) if jtj > 0 else math.inf, seconds)


def fitted(net: PINNNet, x: np.ndarray) -> np.ndarray:
    """u_net at the points x."""
    with torch.no_grad():
        xt = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1)
        return net(xt).squeeze(1).numpy()


def trace_points(trace: list[float], max_points: int = 200) -> list[tuple[int, float]]:
    """About `max_points` (step, k̂) pairs for a tracker, always including the last."""
    stride = max(1, math.ceil(len(trace) / max_points))
    keep = sorted(set(range(0, len(trace), stride)) | ({len(trace) - 1} if trace else set()))
    return [(i, trace[i]) for i in keep]
