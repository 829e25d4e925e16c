"""The `math` section of params.yaml: gradient descent's start and stopping, the FFT's sampling.

python -m appliedtorch.params params.yaml     # checks this section with the others
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from appliedtorch.core.params import MAX_POINTS, MAX_STEPS, Section


class MathParams(Section):
    """The demos' knobs; each demo is checked against its analytic answer whatever they are."""

    bound_notes: ClassVar[dict[str, str]] = {
        "gd_start": ": f'(x) = 4x^3 - 9x^2 overflows float64 beyond; start nearer the minimum 9/4"
    }

    # The tutorial starts at 0, a stationary point of x^4 - 3x^3 + 2, where descent never moves.
    gd_start: float = Field(3.0, ge=-1e75, le=1e75)
    gd_lr: float = Field(0.01, gt=0)
    gd_steps: int = Field(1000, gt=0, le=MAX_STEPS)  # at most; stops once |f'(x)| <= gd_tol
    gd_tol: float = Field(1e-10, gt=0)
    fft_sample_rate: float = Field(100.0, gt=20, le=MAX_POINTS)  # Hz; above 10 Hz's Nyquist
    fft_duration: float = Field(1.0, gt=0)  # seconds; whole cycles of 5 and 10 Hz avoid leakage

    @model_validator(mode="after")
    def _fft_samples(self) -> MathParams:
        # fft_demo takes round(rate * duration) samples; fewer than 2 has no spectrum to check.
        n = round(self.fft_sample_rate * self.fft_duration)
        if not 2 <= n <= MAX_POINTS:
            raise ValueError(
                f"math.fft_sample_rate x math.fft_duration must give 2 to {MAX_POINTS} samples "
                f"(got {self.fft_sample_rate:g} Hz x {self.fft_duration:g} s = {n})"
            )
        return self
