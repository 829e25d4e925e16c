"""Tiny untrained classifier model files, written as a training stage writes them.

tiny_model_file(tmp_path / "mlp.pt", "mlp")    # 1x28x28 grey in, 10 classes out
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from appliedtorch.classify.nets.models import CNN, MLP, PixelClassifier, save_model

SHAPES = {"mlp": (1, 28, 28), "cnn": (3, 32, 32)}


def tiny_model_file(path: Path, net_name: str = "mlp") -> dict[str, Any]:
    """Write an untrained `net_name` (mlp or cnn) model file at `path`; return what it holds."""
    c, h, w = SHAPES[net_name]
    torch.manual_seed(0)
    if net_name == "mlp":
        args = {"in_features": c * h * w, "hidden_size": 16, "num_classes": 10}
        net = MLP(**args)
    else:
        args = {"in_channels": c, "num_classes": 10, "dropout": 0.5, "image_size": h,
                "width": 4, "hidden_size": 8}  # fmt: skip
        net = CNN(**args)
    meta = {
        "classes": [f"class {i}" for i in range(10)],
        "mean": [0.5] * c,
        "std": [0.25] * c,
        "dataset": "mnist" if c == 1 else "cifar10",
        "data_source": "synthetic",
        "input_shape": [c, h, w],
        "input_dtype": "uint8",
        "output": "probabilities",
    }
    save_model(path, PixelClassifier(net, meta["mean"], meta["std"]), net_name, args, **meta)
    return torch.load(path, weights_only=True)
