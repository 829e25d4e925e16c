"""One network for a family of problems: u(x; k) with u'' + k·u = 0, u(0) = 0, u(π/2) = 1.

    python stages/pinn_family.py --params params.yaml --model models/pinn_family.pt \
        --reports reports/pinn_family

`FamilyNet` takes (x, k) and meets both boundary conditions exactly for every k (the forward
problem's hard ansatz, with N depending on k too). `train` fits it on a grid of x and of k
(Chebyshev nodes in k, which hold the ends of the range) with the forward problem's optimizers;
`errors_by_k` checks it against the closed form sin(√k·x) / sin(√k·π/2) at values of k midway
between training ones, which the net never saw. The model file is untrusted on load: weights
only, shapes checked against the config, every value finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import save_torch, thread_count
from appliedtorch.pinn import optim
from appliedtorch.pinn.problem import (
    K_HIGH,
    K_LOW,
    A,
    B,
    ansatz,
    exact_solution_k,
    grid,
    layer_pairs,
    tanh_body,
    taylor,
)

X_SCALE = 2 / (B - A)  # the net sees x scaled onto [-1, 1]
MAX_MODEL_BYTES = 64 << 20  # a family net is a few KB; refuse to unpickle anything much larger


class FamilyNet(nn.Module):
    """u(x; k) = x/(π/2) + x(π/2 - x)·N(x, s(k)), s mapping [k_min, k_max] onto [-1, 1]."""

    def __init__(self, hidden_sizes: list[int], k_min: float, k_max: float, dtype: torch.dtype):
        super().__init__()
        self.hidden_sizes, self.k_min, self.k_max = list(hidden_sizes), k_min, k_max
        self.body = tanh_body([2, *self.hidden_sizes, 1], dtype)

    def config(self) -> dict[str, Any]:
        """What rebuilds this network (dtype as a string)."""
        dtype = str(next(self.parameters()).dtype).removeprefix("torch.")
        return {
            "hidden_sizes": self.hidden_sizes,
            "k_min": self.k_min,
            "k_max": self.k_max,
            "dtype": dtype,
        }

    def inputs(self, x: Tensor, k: Tensor) -> Tensor:
        """(N, 2): x and k scaled onto [-1, 1] (centred inputs train better)."""
        s = 2 * (k - self.k_min) / (self.k_max - self.k_min) - 1
        return torch.cat([X_SCALE * (x - A) - 1, s], dim=1)

    def forward(self, x: Tensor, k: Tensor) -> Tensor:
        n = self.body(self.inputs(x, k))  # (N, 1)
        return ansatz("hard", x, n, n, n)[0]

    def value_and_uxx(
        self, x: Tensor, k: Tensor, layers: list[tuple[Tensor, Tensor]] | None = None
    ) -> tuple[Tensor, Tensor]:
        """u and u'' (along x) at the points (x, k), with these or the net's own weights."""
        if layers is None:
            layers = [(m.weight, m.bias) for m in self.body if isinstance(m, nn.Linear)]
        n, n1, n2 = taylor(layers, self.inputs(x, k))  # derivatives along the scaled x
        return ansatz("hard", x, n, X_SCALE * n1, X_SCALE**2 * n2)


def residual_vector(net: FamilyNet, layers: list[tuple[Tensor, Tensor]], x: Tensor, k: Tensor):
    """(u'' + k·u)/√N at the points (x, k): its sum of squares is the loss."""
    u, uxx = net.value_and_uxx(x, k, layers)
    return (uxx + k * u).squeeze(1) / math.sqrt(x.shape[0])


def chebyshev(n: int, low: float, high: float) -> np.ndarray:
    """n Chebyshev-Lobatto nodes on [low, high], ends included, in increasing order."""
    if n == 1:
        return np.array([(low + high) / 2])
    t = -np.cos(np.pi * np.arange(n) / (n - 1))
    return low + (high - low) * (t + 1) / 2


def training_grid(cfg: Any, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The (x, k) product grid the net is trained on, as two columns (x_points·k_points, 1)."""
    xs = grid(cfg.x_points, dtype).squeeze(1)
    ks = torch.tensor(chebyshev(cfg.k_points, cfg.k_min, cfg.k_max), dtype=dtype)
    xx, kk = torch.meshgrid(xs, ks, indexing="ij")
    return xx.reshape(-1, 1), kk.reshape(-1, 1)


def unseen_k(cfg: Any) -> np.ndarray:
    """`eval_k_points` values of k, none a training value: each gap between neighbouring
    training values gets a share of them in proportion to its width, evenly spaced inside it
    (at (j + 1/2)/m of the gap), so each lies at least half its own spacing from a node."""
    nodes = chebyshev(cfg.k_points, cfg.k_min, cfg.k_max)
    gaps = np.diff(nodes)
    share = cfg.eval_k_points * gaps / gaps.sum()
    counts = np.floor(share).astype(int)
    extra = cfg.eval_k_points - counts.sum()  # the largest remainders get one more
    counts[np.argsort(share - counts)[::-1][:extra]] += 1
    ks = [
        lo + gap * (np.arange(m) + 0.5) / m
        for lo, gap, m in zip(nodes[:-1], gaps, counts, strict=True)
        if m
    ]
    return np.concatenate(ks)


@dataclass
class FamilyResult:
    """What `train` returns: the net, the loss per step, each phase's steps and seconds."""

    net: FamilyNet
    loss: list[float] = field(default_factory=list)
    phases: dict[str, tuple[int, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def train(cfg: Any) -> FamilyResult:
    """Train a family net per the `pinn_family` section: Adam, then L-BFGS, then L-M."""
    with thread_count(cfg.num_threads):
        return _train(cfg)


def _train(cfg: Any) -> FamilyResult:
    dtype = torch.float64
    net = FamilyNet(cfg.hidden_sizes, cfg.k_min, cfg.k_max, dtype)
    result = FamilyResult(net=net)
    x, k = training_grid(cfg, dtype)
    params = list(net.parameters())

    def loss(ts: list[Tensor] | None = None) -> Tensor:
        return residual_vector(net, layer_pairs(ts or params), x, k).pow(2).sum()

    phases = {
        "adam": lambda: optim.adam(params, lambda _: loss(), cfg.adam_steps, cfg.lr, result.loss),
        "lbfgs": lambda: optim.lbfgs(params, loss, cfg.lbfgs_steps, result.loss),
        "lm": lambda: optim.levenberg_marquardt(
            params,
            lambda ts: residual_vector(net, layer_pairs(ts), x, k),
            x.shape[0],
            cfg.lm_steps,
            result.loss,
        ),
    }
    optim.run_phases(
        phases,
        cfg,
        result,
        lambda name: f"{name}: loss {result.loss[-1]:.3e}, {result.seconds[name]:.2f} s",
    )
    return result


def errors_by_k(net: FamilyNet, ks: np.ndarray, x_points: int) -> np.ndarray:
    """max over x_points evenly spaced x of |u_net(x; k) - u(x; k)|, for each k."""
    dtype = next(net.parameters()).dtype
    x = grid(x_points, dtype)
    out = np.empty(len(ks))
    with torch.no_grad():
        for i, k in enumerate(ks):
            kk = torch.full_like(x, float(k))
            out[i] = float((net(x, kk) - exact_solution_k(x, float(k))).abs().max())
    return out


def save(net: FamilyNet, path: str | Path) -> None:
    """The weights and the config that rebuilds the net (atomic)."""
    save_torch({"state_dict": net.state_dict(), "config": net.config()}, path)


def load(path: str | Path) -> FamilyNet:
    """A net written by `save`, checked: weights only, config and shapes as built, finite."""
    path = Path(path)
    bad = f"{path}: not a pinn_family model"
    try:
        if path.stat().st_size > MAX_MODEL_BYTES:
            raise AppliedTorchError(f"{bad} (larger than {MAX_MODEL_BYTES >> 20} MB)")
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AppliedTorchError(f"{path}: no such model; run `dvc repro pinn_family`") from None
    except AppliedTorchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means: not our model file
        raise AppliedTorchError(f"{bad} ({type(exc).__name__})") from None
    try:
        cfg, state = blob["config"], blob["state_dict"]
        widths = [int(w) for w in cfg["hidden_sizes"]]
        k_min, k_max = float(cfg["k_min"]), float(cfg["k_max"])
        dtype = {"float64": torch.float64, "float32": torch.float32}[cfg["dtype"]]
    except (KeyError, TypeError, ValueError):
        raise AppliedTorchError(f"{bad} (config missing or malformed)") from None
    if not (K_LOW < k_min < k_max < K_HIGH) or not 0 < len(widths) <= 64:
        raise AppliedTorchError(f"{bad} (k range or layers out of bounds)")
    if any(not 0 < w <= 4096 for w in widths):
        raise AppliedTorchError(f"{bad} (layer widths out of bounds)")
    net = FamilyNet(widths, k_min, k_max, dtype)
    expected = {name: t.shape for name, t in net.state_dict().items()}
    if not isinstance(state, dict) or {n: getattr(t, "shape", None) for n, t in state.items()} != (
        expected
    ):
        raise AppliedTorchError(f"{bad} (weights do not match its config)")
    if not all(t.dtype == dtype and bool(torch.isfinite(t).all()) for t in state.values()):
        raise AppliedTorchError(f"{bad} (weights of another dtype, or not finite)")
    net.load_state_dict(state)
    return net.eval()


def evaluate_at(net: FamilyNet, k: float, x: np.ndarray) -> np.ndarray:
    """u_net(x; k) at the given points (k inside the trained range, x in [0, π/2])."""
    if not net.k_min <= k <= net.k_max:
        raise AppliedTorchError(f"k must be in the trained range [{net.k_min}, {net.k_max}]")
    if not np.all((x >= A) & (x <= B)):
        raise AppliedTorchError(f"x must be in [0, π/2] = [{A}, {B:.6f}]")
    dtype = next(net.parameters()).dtype
    xt = torch.as_tensor(x, dtype=dtype).reshape(-1, 1)
    with torch.no_grad():
        return net(xt, torch.full_like(xt, k)).squeeze(1).numpy()
