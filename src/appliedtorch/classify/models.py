"""Networks from the tutorial: the MNIST MLP and the CIFAR-10 CNN, and their model files.

    >>> model = MLP(in_features=784, hidden_size=128, num_classes=10)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])

No training logic lives here (see `appliedtorch.classify.loop`).
"""

from __future__ import annotations

import os
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


ARCHITECTURES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN}


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build `arch` ('mlp' or 'cnn') from its constructor arguments (the saved `model_args`)."""
    if arch not in ARCHITECTURES:
        raise AppliedTorchError(
            f"unknown model architecture '{arch}' (known: {', '.join(ARCHITECTURES)})"
        )
    return ARCHITECTURES[arch](**kwargs)


def save_model(
    path: str | os.PathLike, model: nn.Module, arch: str, model_args: dict[str, Any], **meta: Any
) -> None:
    """Write the model file: the state dict with everything needed to rebuild and use it (atomically)."""
    # contiguous(): a channels_last model would otherwise save NHWC strides that surprise loaders.
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_torch({"arch": arch, "model_args": model_args, "state_dict": state, **meta}, path)


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a model file written by `save_model`; returns (model in eval mode,
    the file's contents)."""
    path = Path(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AppliedTorchError(f"{path}: model file not found (run the training stage)") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means the file is unusable
        raise AppliedTorchError(f"{path}: not a readable model file ({first_line(exc)})") from None
    if not isinstance(saved, dict) or not {"arch", "model_args", "state_dict"} <= saved.keys():
        raise AppliedTorchError(f"{path}: not an appliedtorch model file (arch/model_args missing)")
    model = build_model(saved["arch"], **saved["model_args"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved
