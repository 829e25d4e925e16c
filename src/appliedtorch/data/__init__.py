"""MNIST and CIFAR-10: sources, download and verification, synthetic stand-ins, loading.

python stages/download.py --params params.yaml --dataset mnist --out data/raw/mnist
>>> data = load_dataset("mnist", "data/raw/mnist")     # uint8 tensors, classes, source
"""

from appliedtorch.data.fetch import download
from appliedtorch.data.loading import (
    DATASETS,
    UPSTREAM,
    ImageData,
    Upstream,
    load_dataset,
    synthetic_in_memory,
)

__all__ = [
    "DATASETS",
    "UPSTREAM",
    "ImageData",
    "Upstream",
    "download",
    "load_dataset",
    "synthetic_in_memory",
]
