"""Networks from the tutorial: the MNIST MLP and the CIFAR-10 CNN, and their model files.

    >>> model = MLP(in_features=784, hidden_size=128, num_classes=10)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> classifier = PixelClassifier(model, mean=[0.5], std=[0.5])
    >>> classifier(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape  # probabilities
    torch.Size([2, 10])

Training feeds the networks normalised float batches; what is saved, logged and served is the
network inside a `PixelClassifier`, which takes the uint8 pixels of an image file as they come.
No training logic lives here (see `appliedtorch.classify.loop`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import first_line, save_torch


class MLP(nn.Module):
    """Two hidden ReLU layers: 784 -> hidden -> hidden -> 10 (the tutorial's section 10)."""

    def __init__(self, in_features: int = 784, hidden_size: int = 128, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_size)
        self.fc2 = nn.Linear(hidden_size, hidden_size)
        self.fc3 = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, 1, 28, 28) -> (B, 784)
        x = F.relu(self.fc1(x))  # (B, hidden)
        x = F.relu(self.fc2(x))  # (B, hidden)
        return self.fc3(x)  # (B, 10) logits


class CNN(nn.Module):
    """Three 3x3 conv + max-pool blocks (32, 64, 128 channels), then fc 2048 -> 512 -> 10."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dropout: float = 0.5,
        image_size: int = 32,
        hidden_size: int = 512,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2, 2)
        side = image_size // 8  # three 2x2 poolings: 32 -> 4
        self.fc1 = nn.Linear(128 * side * side, hidden_size)
        self.fc2 = nn.Linear(hidden_size, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(pool(.)) == pool(relu(.)) exactly (ReLU is monotone), values and gradients alike;
        # pooling first runs ReLU and its backward on a quarter of the values.
        x = F.relu(self.pool(self.conv1(x)))  # (B, 32, 16, 16)
        x = F.relu(self.pool(self.conv2(x)))  # (B, 64, 8, 8)
        x = F.relu(self.pool(self.conv3(x)))  # (B, 128, 4, 4)
        x = x.flatten(1)  # (B, 2048)
        x = self.dropout(F.relu(self.fc1(x)))  # (B, 512)
        return self.fc2(x)  # (B, 10) logits


class PixelClassifier(nn.Module):
    """Raw uint8 pixels (B, C, H, W) in [0, 255] -> class probabilities (B, K): what is saved,
    logged to MLflow and served, so a user sends an image's pixels, not normalised floats."""

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        channels_last: bool = False,
    ):
        super().__init__()
        self.net = net
        # Per-channel pixel mean and std in [0, 1] (C,): buffers, so they live in the state dict.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (x / 255 - mean) / std, computed exactly as training's `batches.Normalizer` does (one
        # fused multiply-add with the same float32 constants), so predictions match to the bit.
        std = self.std.view(1, -1, 1, 1)  # (1, C, 1, 1)
        scale = 1.0 / (255.0 * std)
        shift = -self.mean.view(1, -1, 1, 1) / std
        x = x.to(dtype=torch.float32, memory_format=self.memory_format)  # (B, C, H, W)
        logits = self.net(torch.addcmul(shift, x, scale))  # (B, K)
        return torch.softmax(logits.float(), dim=1)  # (B, K), rows sum to 1


ARCHITECTURES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build `arch` ('mlp' or 'cnn') from its constructor arguments (the saved `model_args`)."""
    if arch not in ARCHITECTURES:
        raise AppliedTorchError(
            f"unknown model architecture '{arch}' (known: {', '.join(ARCHITECTURES)})"
        )
    return ARCHITECTURES[arch](**kwargs)


def save_model(
    path: str | os.PathLike,
    model: PixelClassifier,
    arch: str,
    model_args: dict[str, Any],
    **meta: Any,
) -> None:
    """Write the model file: the pixel classifier's state dict (network weights, mean and std) with
    everything needed to rebuild and use it (atomically)."""
    # contiguous(): a channels_last model would otherwise save NHWC strides that surprise loaders.
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_torch({"arch": arch, "model_args": model_args, "state_dict": state, **meta}, path)


def load_model(path: str | os.PathLike) -> tuple[PixelClassifier, dict[str, Any]]:
    """Rebuild the pixel classifier from a model file written by `save_model`; returns (model in
    eval mode: uint8 pixels in, probabilities out, the file's contents)."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AppliedTorchError(f"{path}: model file not found (run the training stage)") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means the file is unusable
        raise AppliedTorchError(f"{path}: not a readable model file ({first_line(exc)})") from None
    if not isinstance(saved, dict) or not {"arch", "model_args", "state_dict"} <= saved.keys():
        raise AppliedTorchError(f"{path}: not an appliedtorch model file (arch/model_args missing)")
    if saved.get("input_dtype") != "uint8":
        raise AppliedTorchError(
            f"{path}: an older model file (its network takes normalised floats, not pixels); "
            "run the training stage again"
        )
    net = build_model(saved["arch"], **saved["model_args"])
    model = PixelClassifier(net, saved["mean"], saved["std"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved
