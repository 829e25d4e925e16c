"""Arithmetic of a training step, counted by torch, and what fraction of the machine's peak it reaches.

    python benchmarks/flops.py            # FLOPs per training sample of the MLP and the CNN

`train_flops_per_sample` runs one forward + backward pass of the model under
`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions; element-wise work
is not counted, as is usual for FLOP/s figures). benchmarks/run.py divides the count for an epoch
by its seconds for the achieved GFLOP/s and compares that with `machine.hardware.cpu_peak_gflops`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from appliedtorch.classify.nets.models import build_model


def train_flops_per_sample(arch: str, model_args: dict, input_shape: tuple[int, ...]) -> float:
    """FLOPs of one training sample (forward + backward) of `arch`, counted on a batch of 64."""
    torch.manual_seed(0)
    model = build_model(arch, **model_args)
    batch = 64
    x = torch.randn(batch, *input_shape)
    y = torch.randint(0, model_args["num_classes"], (batch,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def achieved(flops_per_sample: float, samples: int, seconds: float) -> float:
    """GFLOP/s of `samples` training samples in `seconds`."""
    return flops_per_sample * samples / seconds / 1e9


if __name__ == "__main__":
    mlp = train_flops_per_sample(
        "mlp", {"in_features": 784, "hidden_size": 128, "num_classes": 10}, (1, 28, 28)
    )
    cnn = train_flops_per_sample(
        "cnn", {"in_channels": 3, "num_classes": 10, "dropout": 0.5, "image_size": 32}, (3, 32, 32)
    )
    print(
        f"MLP: {mlp / 1e6:.2f} MFLOP per training sample, {mlp * 60000 / 1e12:.3f} TFLOP per epoch"
    )
    print(
        f"CNN: {cnn / 1e6:.2f} MFLOP per training sample, {cnn * 50000 / 1e12:.3f} TFLOP per epoch"
    )
