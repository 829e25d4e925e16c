"""The `pinn` section of params.yaml: the net, the boundary treatment and the three solvers.

python -m appliedtorch.params params.yaml     # checks this section with the others
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from appliedtorch.core.params import MAX_POINTS, MAX_STEPS, MAX_THREADS, MAX_WIDTH, Section, short


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
