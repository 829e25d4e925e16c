"""The problem, stated as named pieces: u'' + u = 0 on [A, B], u(A) = 0, u(B) = 1, exact sin x.

The network (`PINNNet`, with the hard-boundary ansatz), the `residual`, the `boundary_loss` and
the `exact_solution`, apart from the solver (DeepXDE's habit: pde, solution and output transform).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# The problem: u'' + u = 0 on [A, B] with u(A) = UA, u(B) = UB.
A, B = 0.0, math.pi / 2

UA, UB = 0.0, 1.0


def exact_solution(x: Tensor) -> Tensor:
    """The analytic solution sin x."""
    return torch.sin(x)


# The family u'' + k·u = 0 with the same boundary values has a solution for 0 < k < 4 only:
# at k = 4, sin(√k·π/2) = 0 (k = 1 is the problem above).
K_LOW, K_HIGH = 0.0, 4.0


def exact_solution_k(x: Tensor, k: Tensor | float) -> Tensor:
    """u(x; k) = sin(√k·x) / sin(√k·π/2): the solution of u'' + k·u = 0 for 0 < k < 4."""
    root = torch.sqrt(torch.as_tensor(k, dtype=x.dtype))
    return torch.sin(root * x) / torch.sin(root * B)


def closed_form(x: np.ndarray, k: float) -> np.ndarray:
    """exact_solution_k in NumPy (for SciPy's least squares and the observations)."""
    return np.sin(math.sqrt(k) * x) / math.sin(math.sqrt(k) * B)


def tanh_body(widths: list[int], dtype: torch.dtype) -> nn.Sequential:
    """Linear layers of `widths` (inputs, hidden..., outputs) with tanh between them."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class PINNNet(nn.Module):
    """Tanh MLP N(x); with `boundary="hard"` it returns u = g(x) + (x - A)(B - x) N(x).

    g is the straight line through both boundary values, so the hard ansatz meets u(A) = UA and
    u(B) = UB exactly whatever the weights are; with `boundary="soft"` u = N(x) and the loss has
    to push it onto the boundary values (the tutorial's penalty).
    """

    def __init__(
        self,
        hidden_sizes: list[int] | tuple[int, ...] = (10, 10),
        boundary: str = "hard",
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        if boundary not in ("soft", "hard"):
            raise ValueError(f"boundary must be 'soft' or 'hard' (got {boundary!r})")
        self.hidden_sizes = list(hidden_sizes)
        self.boundary = boundary
        self.body = tanh_body([1, *self.hidden_sizes, 1], dtype)

    @property
    def linears(self) -> list[nn.Linear]:
        """The affine layers, input to output."""
        return [m for m in self.body if isinstance(m, nn.Linear)]

    def config(self) -> dict[str, Any]:
        """What `PINNNet(**config)` needs to rebuild this network (dtype as a string)."""
        dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        return {"hidden_sizes": self.hidden_sizes, "boundary": self.boundary, "dtype": dtype}

    def forward(self, x: Tensor) -> Tensor:
        n = self.body(x)  # (N, 1)
        if self.boundary == "soft":
            return n
        return _line(x) + (x - A) * (B - x) * n

    def value_and_uxx(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """u and u'' at x by forward Taylor propagation: exact, cheaper than double autograd."""
        layers = [(m.weight, m.bias) for m in self.linears]
        return ansatz(self.boundary, x, *taylor(layers, x))


def _line(x: Tensor) -> Tensor:
    return UA + (UB - UA) * (x - A) / (B - A)


def taylor(layers: list[tuple[Tensor, Tensor]], x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """N, N', N'' of the tanh MLP at x (N, d), pushed through the layers together; the
    derivatives are along the first input (x; a parametric net's other inputs are constants).

    Weights may be (out, in) or per sample (N, out, in); the per-sample form gives the Jacobian
    of every residual with respect to every weight from one backward pass.
    """
    dx = torch.zeros_like(x)
    dx[:, 0] = 1
    z = torch.stack([x, dx, torch.zeros_like(x)], dim=1)  # (N, 3, d): N, N', N''
    for k, (w, b) in enumerate(layers):
        z = z @ w.transpose(-1, -2)  # (N, 3, out)
        h, d1, d2 = z[:, 0] + b, z[:, 1], z[:, 2]
        if k < len(layers) - 1:
            t = torch.tanh(h)
            s = 1 - t * t  # tanh' ; tanh'' = -2 t s
            h, d1, d2 = t, s * d1, s * d2 - 2 * t * s * d1 * d1
        z = torch.stack([h, d1, d2], dim=1)
    return z[:, 0], z[:, 1], z[:, 2]


def layer_pairs(tensors: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """[w1, b1, w2, b2, ...] (a net's parameters in order) as (weight, bias) per layer."""
    return list(zip(tensors[0::2], tensors[1::2], strict=True))


def ansatz(boundary: str, x: Tensor, n: Tensor, n1: Tensor, n2: Tensor) -> tuple[Tensor, Tensor]:
    """u and u'' from N, N', N'' for the soft (u = N) or hard (u = g + φN) network."""
    if boundary == "soft":
        return n, n2
    phi, dphi = (x - A) * (B - x), (A + B) - 2 * x  # φ'' = -2
    return _line(x) + phi * n, -2 * n + 2 * dphi * n1 + phi * n2


def residual(net: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """u'' + u at the points x (N, 1), differentiating `net` twice with autograd."""
    x = x.detach().requires_grad_(True)
    u = net(x)
    (u_x,) = torch.autograd.grad(u, x, torch.ones_like(u), create_graph=True)
    (u_xx,) = torch.autograd.grad(u_x, x, torch.ones_like(u_x), create_graph=True)
    return u_xx + u


def boundary_points(dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The boundary x = A, B as a column (2, 1) and the values u must take there."""
    return torch.tensor([[A], [B]], dtype=dtype), torch.tensor([[UA], [UB]], dtype=dtype)


def boundary_loss(net: Callable[[Tensor], Tensor], dtype: torch.dtype = torch.float64) -> Tensor:
    """(u(A) - UA)² + (u(B) - UB)²: the tutorial's penalty (0 up to rounding for a hard net)."""
    xb, ub = boundary_points(dtype)
    return (net(xb) - ub).pow(2).sum()


def pinn_loss(net: PINNNet, x: Tensor, bc_weight: float = 1.0) -> Tensor:
    """Mean squared residual at x, plus the weighted boundary penalty for a soft network."""
    loss = residual(net, x).pow(2).mean()
    if net.boundary == "soft":
        loss = loss + bc_weight * boundary_loss(net, x.dtype)
    return loss


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a params value (`pinn.dtype`: float32 | float64)."""
    return {"float32": torch.float32, "float64": torch.float64}[name]


def grid(n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """n evenly spaced points on [A, B], boundaries included, as a column (n, 1)."""
    return torch.linspace(A, B, n, dtype=dtype).unsqueeze(1)
