"""Networks: the tutorial's MNIST MLP and CIFAR-10 CNN (with the tutorial's "extend it" options:
depth, width, batch norm, dropout, flip test-time augmentation), a small ResNet, and model files.

    >>> model = MLP(in_features=784, hidden_size=128, num_classes=10)
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    >>> classifier = PixelClassifier(model, mean=[0.5], std=[0.5])
    >>> classifier(torch.zeros(2, 1, 28, 28, dtype=torch.uint8)).shape  # probabilities
    torch.Size([2, 10])

Training feeds the networks normalised float batches; what is saved, logged and served is the
network inside a `PixelClassifier`, which takes the uint8 pixels of an image file as they come.
No training logic lives here (see `appliedtorch.classify.training.loop`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import first_line, save_torch


class FlipAveraged(nn.Module):
    """An image classifier whose `logits(x)` the subclass defines; with `flip_tta`, evaluation
    (eval mode) returns the mean of the logits of `x` and of `x` mirrored left-right (airbench's
    `tta_level=1`): a CIFAR-10 image and its mirror show the same class."""

    flip_tta: bool = False

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip_tta and not self.training:
            return 0.5 * (self.logits(x) + self.logits(x.flip(-1)))  # (B, K)
        return self.logits(x)


class MLP(nn.Module):
    """`hidden_layers` ReLU layers of `hidden_size` units, then 10 logits. The tutorial's
    (section 10) is 784 -> 128 -> 128 -> 10; `residual` adds a skip connection around every
    hidden layer after the first (x + layer(x)), which keeps deep stacks trainable."""

    # Recorded in a model file even at their defaults: the tutorial's files always held them.
    always_saved: ClassVar[tuple[str, ...]] = ("in_features", "hidden_size", "num_classes")

    def __init__(
        self,
        in_features: int = 784,
        hidden_size: int = 128,
        num_classes: int = 10,
        hidden_layers: int = 2,
        residual: bool = False,
        batch_norm: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.hidden_layers, self.residual = hidden_layers, residual
        widths = [in_features] + [hidden_size] * hidden_layers
        # Named fc1, fc2, ... as in the tutorial (its model files keep loading); a bias before a
        # BatchNorm is redundant (the norm's shift replaces it).
        for i in range(1, hidden_layers + 1):
            self.add_module(f"fc{i}", nn.Linear(widths[i - 1], hidden_size, bias=not batch_norm))
            if batch_norm:
                self.add_module(f"bn{i}", nn.BatchNorm1d(hidden_size))
        self.add_module(f"fc{hidden_layers + 1}", nn.Linear(hidden_size, num_classes))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        # The layers in call order, looked up once: name lookups and a call of the Identity at
        # every step were a measurable share of this small net's forward (docs/performance.md).
        # A tuple, not a module list: the layers are registered once, under their own names.
        self.order = (
            [
                (getattr(self, f"fc{i}"), getattr(self, f"bn{i}", None))
                for i in range(1, hidden_layers + 1)
            ],
            getattr(self, f"fc{hidden_layers + 1}"),
            self.dropout if dropout else None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, out, dropout = self.order
        x = x.flatten(1)  # (B, 1, 28, 28) -> (B, 784)
        for i, (fc, bn) in enumerate(hidden):
            h = F.relu(fc(x) if bn is None else bn(fc(x)))  # (B, hidden)
            h = h if dropout is None else dropout(h)
            x = x + h if self.residual and i > 0 else h  # (B, hidden)
        return out(x)  # (B, 10) logits


class CNN(FlipAveraged):
    """The tutorial's (section 11): three 3x3 conv + max-pool blocks of `width`, 2x and 4x
    channels (32, 64, 128), then fc 2048 -> 512 -> 10 with dropout. `batch_norm` puts a
    BatchNorm after each conv; `flip_tta` averages the logits of each image and its mirror when
    evaluating (eval mode)."""

    always_saved: ClassVar[tuple[str, ...]] = (
        "in_channels",
        "num_classes",
        "dropout",
        "image_size",
    )

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dropout: float = 0.5,
        image_size: int = 32,
        hidden_size: int = 512,
        width: int = 32,
        batch_norm: bool = False,
        flip_tta: bool = False,
    ):
        super().__init__()
        w, self.flip_tta = width, flip_tta
        self.conv1 = nn.Conv2d(in_channels, w, kernel_size=3, padding=1, bias=not batch_norm)
        self.conv2 = nn.Conv2d(w, 2 * w, kernel_size=3, padding=1, bias=not batch_norm)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, kernel_size=3, padding=1, bias=not batch_norm)
        self.pool = nn.MaxPool2d(2, 2)
        side = image_size // 8  # three 2x2 poolings: 32 -> 4
        self.fc1 = nn.Linear(4 * w * side * side, hidden_size)
        self.fc2 = nn.Linear(hidden_size, num_classes)
        self.dropout = nn.Dropout(dropout)
        if batch_norm:  # no random init: the tutorial's layers draw their weights as before
            self.bn1, self.bn2, self.bn3 = (nn.BatchNorm2d(c) for c in (w, 2 * w, 4 * w))
        else:
            self.bn1 = self.bn2 = self.bn3 = nn.Identity()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # relu(pool(.)) == pool(relu(.)) exactly (ReLU is monotone), values and gradients alike;
        # pooling first runs ReLU and its backward on a quarter of the values. BatchNorm goes
        # after the pooling too (as in airbench): a quarter of the values to normalise.
        x = F.relu(self.bn1(self.pool(self.conv1(x))))  # (B, w, 16, 16)
        x = F.relu(self.bn2(self.pool(self.conv2(x))))  # (B, 2w, 8, 8)
        x = F.relu(self.bn3(self.pool(self.conv3(x))))  # (B, 4w, 4, 4)
        x = x.flatten(1)  # (B, 4w * 16)
        x = self.dropout(F.relu(self.fc1(x)))  # (B, 512)
        return self.fc2(x)  # (B, 10) logits


class ConvBlock(nn.Module):
    """conv 3x3 -> (max-pool 2x2) -> BatchNorm -> ReLU; pooling before the norm, as in airbench."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=not batch_norm)
        self.pool = nn.MaxPool2d(2, 2) if pool else nn.Identity()
        self.norm = nn.BatchNorm2d(c_out) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.pool(self.conv(x))))  # (B, c_out, H or H/2, W or W/2)


class Stage(nn.Module):
    """One ResNet stage: a pooling ConvBlock to `c_out` channels at half the resolution, then a
    residual pair of ConvBlocks (x + f(x)), as in the ResNet-9 of Page's DAWNBench entry."""

    def __init__(self, c_in: int, c_out: int, batch_norm: bool):
        super().__init__()
        self.down = ConvBlock(c_in, c_out, batch_norm, pool=True)
        self.res1 = ConvBlock(c_out, c_out, batch_norm)
        self.res2 = ConvBlock(c_out, c_out, batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)  # (B, c_out, H/2, W/2)
        return x + self.res2(self.res1(x))  # (B, c_out, H/2, W/2)


class ResNet(FlipAveraged):
    """A small residual net for CIFAR-10: a stem conv, three residual stages of `width`, 2x and
    4x channels (each halving the resolution), global max-pool and one linear layer.

    About 32,000 x width^2 multiply-adds per image: width 16 is 8.7 M, under the tutorial CNN's
    11.3 M (see benchmarks/flops.py)."""

    always_saved: ClassVar[tuple[str, ...]] = (
        "in_channels",
        "num_classes",
        "dropout",
        "width",
        "batch_norm",
        "flip_tta",
    )

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        dropout: float = 0.0,
        width: int = 16,
        batch_norm: bool = True,
        flip_tta: bool = False,
    ):
        super().__init__()
        w, self.flip_tta = width, flip_tta
        self.stem = ConvBlock(in_channels, w, batch_norm)
        self.stage1 = Stage(w, w, batch_norm)
        self.stage2 = Stage(w, 2 * w, batch_norm)
        self.stage3 = Stage(2 * w, 4 * w, batch_norm)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(4 * w, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, 32, 32)
        x = self.stage1(x)  # (B, w, 16, 16)
        x = self.stage2(x)  # (B, 2w, 8, 8)
        x = self.stage3(x)  # (B, 4w, 4, 4)
        x = torch.amax(x, dim=(2, 3))  # (B, 4w): global max-pool
        return self.fc(self.dropout(x))  # (B, 10) logits


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


class Ensemble(nn.Module):
    """A deep ensemble: the mean of its members' class probabilities, returned as its logarithm
    (B, K), so it is a network like the others: cross-entropy on its output is the ensemble's
    negative log-likelihood, and `PixelClassifier`'s softmax gives back the mean probability."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 whatever the autocast: a bf16 log-probability would round the mean.
        logp = torch.stack([F.log_softmax(net(x).float(), dim=1) for net in self.members])
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))  # (B, K)


# The names saved in model files: `mlp` and `cnn` are the tutorial's nets (and their variants).
NETS: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}


def build_model(net_name: str, **kwargs: Any) -> nn.Module:
    """Build net `net_name` ('mlp', 'cnn' or 'resnet') from its constructor arguments (the saved
    `model_args`)."""
    if net_name not in NETS:
        raise AppliedTorchError(f"unknown net '{net_name}' (known: {', '.join(NETS)})")
    return NETS[net_name](**kwargs)


def build_network(net_name: str, model_args: dict[str, Any], members: int = 1) -> nn.Module:
    """The network a model file describes: one `net_name` net, or an `Ensemble` of `members`."""
    if members == 1:
        return build_model(net_name, **model_args)
    return Ensemble([build_model(net_name, **model_args) for _ in range(members)])


def save_model(
    path: str | os.PathLike,
    model: PixelClassifier,
    net_name: str,
    model_args: dict[str, Any],
    **meta: Any,
) -> None:
    """Write the model file: the pixel classifier's state dict (network weights, mean and std) with
    everything needed to rebuild and use it (atomically)."""
    # contiguous(): a channels_last model would otherwise save NHWC strides that surprise loaders.
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_torch({"net": net_name, "model_args": model_args, "state_dict": state, **meta}, path)


def nonfinite_tensor(state: dict[str, Any]) -> str | None:
    """The name of the first floating-point tensor in `state` holding a NaN or an infinity."""
    for key, tensor in state.items():
        floats = isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
        if floats and not bool(torch.isfinite(tensor).all()):
            return str(key)
    return None


def check_finite(state: dict[str, Any], name: str) -> None:
    """One line naming the first weight of `name` that is NaN or infinite (a diverged run's)."""
    if (key := nonfinite_tensor(state)) is not None:
        raise AppliedTorchError(
            f"{name}: weight '{key[:60]}' holds NaN or inf (a diverged training run); "
            "train it again with a lower learning rate"
        )


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's contents (tensors only: weights_only); one line when it is missing,
    unreadable or not an appliedtorch model file."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AppliedTorchError(f"{path}: model file not found (run the training stage)") from None
    except IsADirectoryError:
        raise AppliedTorchError(f"{path}: a directory, not a model file") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling problem means the file is unusable
        raise AppliedTorchError(f"{path}: not a readable model file ({first_line(exc)})") from None
    if not isinstance(saved, dict) or not {"net", "model_args", "state_dict"} <= saved.keys():
        raise AppliedTorchError(f"{path}: not an appliedtorch model file (net/model_args missing)")
    return saved


def load_model(path: str | os.PathLike) -> tuple[PixelClassifier, dict[str, Any]]:
    """Rebuild the pixel classifier from a model file written by `save_model`; returns (model in
    eval mode: uint8 pixels in, probabilities out, the file's contents)."""
    path = Path(path)
    saved = read_model_file(path)
    if saved.get("input_dtype") != "uint8":
        raise AppliedTorchError(
            f"{path}: an older model file (its network takes normalised floats, not pixels); "
            "run the training stage again"
        )
    net = build_network(saved["net"], saved["model_args"], saved.get("members", 1))
    model = PixelClassifier(net, saved["mean"], saved["std"])
    model.load_state_dict(saved["state_dict"])
    return model.eval(), saved
