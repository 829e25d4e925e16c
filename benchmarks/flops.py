"""Arithmetic of a training step, counted by torch, and what fraction of the machine's peak it reaches.

    python benchmarks/flops.py            # FLOPs per training sample of the MLP and the CNN

`train_flops_per_sample` runs one forward + backward pass of the model under
`torch.utils.flop_counter.FlopCounterMode` (matrix products and convolutions; element-wise work
is not counted, as is usual for FLOP/s figures). `epoch_arithmetic` divides the count for an
epoch by its seconds for the achieved GFLOP/s and compares that with the peak: the CPU's from
`machine.hardware.cpu_peak_gflops`, a known GPU's from its data sheet.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads (benchmarks/common.py)

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.params import ClassifierParams
from appliedtorch.classify.training.loop import model_args_for, net_name
from appliedtorch.data.loading import ImageData
from appliedtorch.machine.hardware import cpu_peak_gflops

# Dense peak TFLOP/s of GPUs by name (vendor data sheets, SXM boards): fp32 without tensor cores
# and bf16 on tensor cores. A GPU not listed gets no percentage.
GPU_PEAK_TFLOPS = {
    "H200": {"fp32": 67.0, "bf16": 989.0},
    "H100": {"fp32": 67.0, "bf16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0},
}


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


def peak_gflops(device: str, fmt: str, threads: int) -> tuple[float | None, str]:
    """The machine's peak GFLOP/s for `fmt` (fp32 | bf16) on `device`, and how it was found."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        for key, peaks in GPU_PEAK_TFLOPS.items():
            if key in name:
                return peaks[fmt] * 1e3, f"{name}: {peaks[fmt]:g} TFLOP/s {fmt} (data sheet)"
        return None, f"{name}: peak unknown"
    return cpu_peak_gflops(fmt, threads)


def epoch_arithmetic(
    data: ImageData, config: ClassifierParams, seconds: float, threads: int, fmt: str, device: str
) -> dict[str, Any]:
    """Achieved GFLOP/s of an epoch of `seconds` (FLOPs counted by torch) against the peak."""
    per_sample = train_flops_per_sample(
        net_name(config), model_args_for(config, data), tuple(data.train_images.shape[1:])
    )
    gflops = achieved(per_sample, len(data.train_images), seconds)
    peak, how = peak_gflops(device, fmt, threads)
    return {
        "flops_per_sample": per_sample,
        "format": fmt,
        "gflops": gflops,
        "peak_gflops": peak,
        "peak_basis": how,
        "percent_of_peak": None if peak is None else 100 * gflops / peak,
    }


def cell(a: dict[str, Any]) -> str:
    """`epoch_arithmetic`'s result for the table: GFLOP/s and the share of the peak."""
    pct = (
        ""
        if a["percent_of_peak"] is None
        else f", {a['percent_of_peak']:.0f}% of {a['format']} peak"
    )
    return f"{a['gflops']:.1f} {a['format']}{pct}"


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
