"""What a math demo returns: what it computed, the analytic answer it is checked against, extras.

    result = make_result("solve", {"x": x}, {"x": [2.0, 3.0]})
    result.error, result.ok      # max |computed - expected|, within the demo's tolerance

Every demo works in float64, so that its error measures the method rather than float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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


def as_floats(value: Any) -> list[float]:
    """A tensor, array, sequence or scalar as a flat list of floats."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return [float(v) for v in np.ravel(np.asarray(value, dtype=float))]


def make_result(name: str, computed: Values, expected: Values, **kwargs: Any) -> DemoResult:
    """A DemoResult from values of any array-like kind, checked to pair up name by name."""
    if computed.keys() != expected.keys():
        raise ValueError(f"demo {name}: computed and expected values have different names")
    got = {k: as_floats(v) for k, v in computed.items()}
    want = {k: as_floats(v) for k, v in expected.items()}
    for k in want:
        if len(got[k]) != len(want[k]):
            raise ValueError(
                f"demo {name}: '{k}' has {len(got[k])} values, expected {len(want[k])}"
            )
    return DemoResult(name, got, want, **kwargs)
