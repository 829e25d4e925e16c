"""Tiny synthetic datasets in memory, as `load_dataset` would return them.

mnist = make_data("mnist", 1280, 300)
"""

from __future__ import annotations

from appliedtorch.data.loading import ImageData, synthetic_in_memory


def make_data(name: str, n_train: int, n_test: int) -> ImageData:
    """Synthetic data in memory, as `load_dataset` would return it."""
    return synthetic_in_memory(name, n_train, n_test)
