"""The PINN sections of params.yaml: `pinn` (the forward problem: net, boundary treatment, the
three solvers and solve_bvp beside them), `pinn_inverse` and `pinn_family`.

python -m appliedtorch.params params.yaml     # checks this section with the others
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from appliedtorch.core.params import (
    MAX_POINTS,
    MAX_SEED,
    MAX_STEPS,
    MAX_THREADS,
    MAX_WIDTH,
    Section,
    short,
)

# Observations: at least k and one degree of freedom for its standard error; at most what a
# CSV of MAX_OBSERVATIONS rows (a few MB) holds.
MIN_OBSERVATIONS, MAX_OBSERVATIONS = 2, 100_000


class PINNParams(Section):
    """PINN recipe. These defaults are the tutorial's (soft BC, Adam only, float32, fixed grid);
    params.yaml holds the accurate recipe (hard BC, float64, Adam -> L-BFGS -> L-M)."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [10, 10], min_length=1, max_length=64)
    boundary: Literal["soft", "hard"] = "soft"
    bc_weight: float = Field(1.0, gt=0)  # weight of the boundary penalty (soft only)
    dtype: Literal["float32", "float64"] = "float32"
    collocation_points: int = Field(100, gt=1, le=MAX_POINTS)
    # Adam draws fresh random points every N steps; 0: fixed grid
    resample_every: int = Field(0, ge=0, le=MAX_STEPS)
    adam_steps: int = Field(10000, ge=0, le=MAX_STEPS)
    lr: float = Field(0.01, gt=0)
    lbfgs_steps: int = Field(0, ge=0, le=MAX_STEPS)
    lbfgs_history: int = Field(50, gt=0, le=10_000)
    lbfgs_tolerance_grad: float = Field(0.0, ge=0)  # torch's 1e-7 stops L-BFGS too early here
    lbfgs_tolerance_change: float = Field(0.0, ge=0)  # torch's 1e-9 is absolute: same problem
    lbfgs_restarts: int = Field(5, ge=0, le=1000)  # fresh L-BFGS starts when one stops early
    lm_steps: int = Field(0, ge=0, le=MAX_STEPS)  # Levenberg-Marquardt steps after L-BFGS
    num_threads: int = Field(1, ge=0, le=MAX_THREADS)  # intra-op threads; 0: leave as is
    eval_points: int = Field(1000, gt=1, le=MAX_POINTS)

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w <= 0 or w > MAX_WIDTH for w in v):
            raise ValueError(f"must be layer widths from 1 to {MAX_WIDTH} (got {short(v)})")
        return v

    # scipy.integrate.solve_bvp on the same problem, beside the PINN (its `tol`)
    bvp_tolerance: float = Field(1e-8, gt=0, lt=1)


class _Recipe(Section):
    """The training recipe the inverse problem and the family share with the forward one."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [10, 10], min_length=1, max_length=16)
    adam_steps: int = Field(300, ge=0, le=MAX_STEPS)
    lr: float = Field(0.01, gt=0)
    lbfgs_steps: int = Field(100, ge=0, le=MAX_STEPS)
    lm_steps: int = Field(400, ge=0, le=MAX_STEPS)
    num_threads: int = Field(1, ge=0, le=MAX_THREADS)

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w <= 0 or w > MAX_RECIPE_WIDTH for w in v):
            raise ValueError(f"must be layer widths from 1 to {MAX_RECIPE_WIDTH} (got {short(v)})")
        return v


MAX_RECIPE_WIDTH = 256
# Levenberg-Marquardt holds a (rows x weights) Jacobian and a (weights x weights) matrix.
MAX_LM_BYTES = 4 << 30


def check_lm_size(section: str, hidden_sizes: list[int], inputs: int, rows: int) -> None:
    """Refuse in one line a Levenberg-Marquardt problem larger than MAX_LM_BYTES."""
    widths = [inputs, *hidden_sizes, 1]
    weights = sum(a * b + b for a, b in zip(widths[:-1], widths[1:], strict=False))
    need = 8 * weights * (2 * rows + 3 * weights)
    if need > MAX_LM_BYTES:
        raise ValueError(
            f"{section}.hidden_sizes {hidden_sizes} with {rows} rows needs "
            f"{need / 2**30:.0f} GB for Levenberg-Marquardt (at most {MAX_LM_BYTES >> 30} GB); "
            "use narrower layers, fewer points or lm_steps: 0"
        )


class PINNInverseParams(_Recipe):
    """The inverse problem: k in u'' + k·u = 0 from observations u(x_i) + noise."""

    k_true: float = 1.0  # in (0, 4): the problem has no solution outside
    points: int = Field(50, ge=MIN_OBSERVATIONS, le=MAX_OBSERVATIONS)
    noise_sd: float = Field(0.01, ge=0)
    noise_seed: int = Field(0, ge=0, le=MAX_SEED)
    k_init: float = 2.0  # the net's k starts here, in (0, 4)
    collocation_points: int = Field(200, gt=1, le=100_000)
    # Weight of the ODE residual against the data misfit: large, so the net stays a solution of
    # the ODE and k alone fits the data (as the closed-form least squares does).
    pde_weight: float = Field(100.0, gt=0)

    @field_validator("k_true", "k_init")
    @classmethod
    def _solvable(cls, v: float) -> float:
        if not 0 < v < 4:
            raise ValueError(f"must be in (0, 4): u(π/2) = 1 has no solution outside (got {v})")
        return v

    @model_validator(mode="after")
    def _size(self) -> PINNInverseParams:
        if self.lm_steps:
            rows = self.collocation_points + self.points
            check_lm_size("pinn_inverse", self.hidden_sizes, 1, rows)
        return self


class PINNFamilyParams(_Recipe):
    """One net u(x; k) for k in [k_min, k_max]."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [16, 16], min_length=1, max_length=16)
    k_min: float = 0.25
    k_max: float = 3.0
    x_points: int = Field(32, gt=1, le=10_000)  # training grid: x_points x k_points
    k_points: int = Field(16, gt=1, le=10_000)
    lbfgs_steps: int = Field(200, ge=0, le=MAX_STEPS)
    lm_steps: int = Field(2500, ge=0, le=MAX_STEPS)
    eval_k_points: int = Field(200, gt=0, le=100_000)  # unseen k for the error check
    eval_x_points: int = Field(1000, gt=1, le=MAX_POINTS)

    @model_validator(mode="after")
    def _range(self) -> PINNFamilyParams:
        if not 0 < self.k_min < self.k_max < 4:
            raise ValueError(
                f"pinn_family.k_min and k_max must satisfy 0 < k_min < k_max < 4 "
                f"(got {self.k_min}, {self.k_max})"
            )
        if self.lm_steps:
            rows = self.x_points * self.k_points
            check_lm_size("pinn_family", self.hidden_sizes, 2, rows)
        return self
