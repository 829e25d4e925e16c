"""For the stages that draw (beside `core`, which every stage imports): matplotlib set up once
for files, not screens (Agg), and saving a Figure atomically."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from appliedtorch.core.utils import atomic_path  # noqa: E402

__all__ = ["plt", "save_figure"]


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """Save a matplotlib Figure as PNG, atomically, and close it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(
                tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None}
            )
    finally:
        plt.close(fig)
