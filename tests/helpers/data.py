"""Tiny synthetic datasets in memory, as `load_dataset` would return them.

mnist = make_data("mnist", 1280, 300)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliedtorch.data.datasets import DATASETS_BY_NAME
from appliedtorch.data.loading import ImageData, synthetic_in_memory


def make_data(name: str, n_train: int, n_test: int) -> ImageData:
    """Synthetic data in memory, as `load_dataset` would return it."""
    return synthetic_in_memory(name, n_train, n_test)


def need_fashion_mnist() -> Path:
    """Debian's Fashion-MNIST directory (package dataset-fashion-mnist). Without it the test is
    skipped with the reason, and fails in CI (`CI` set), which installs the package."""
    fashion = DATASETS_BY_NAME["fashion-mnist"]
    if not fashion.os_dir.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{fashion.os_dir} is missing: CI installs {fashion.os_package}")
        pytest.skip(f"{fashion.os_dir} is missing (apt-get install {fashion.os_package})")
    return fashion.os_dir
