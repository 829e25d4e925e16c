"""How much memory a classifier's training run needs, from its params alone: checked before any
data is loaded or weight allocated.

    check_budget(p, "cnn")   # one line: "cnn.width 1024 with cnn.arch resnet needs ~41 GB for ..."

The network is built on torch's `meta` device (shapes, no memory) and run once on a meta batch
to count its activations. The estimate: float32 weights, their gradients and the optimizer's
state (Adam and AdamW keep two tensors per weight, SGD with momentum one), the activations that
one training batch keeps for its backward pass (3x the layers' outputs: with the functional ReLUs,
residual sums and gradients, measured 1.5-2.5x on the CPU), the largest activation of an
evaluation batch, and the uint8 dataset, which training keeps on its device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from appliedtorch.machine.budget import Need, check_compile, check_device, check_memory

FLOAT = 4  # bytes: training runs in float32 (bf16 autocast keeps float32 weights)
DATASET = {"mlp": "mnist", "cnn": "cifar10"}  # the stage's dataset unless its section names one


def meta_net(section: str, config: Any, shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The section's network on the meta device, with the arguments training builds it with."""
    from appliedtorch.classify.nets.models import CNN, MLP, ResNet

    c, h, w = shape
    with torch.device("meta"):
        if section == "mlp":
            return MLP(
                c * h * w,
                config.hidden_size,
                classes,
                config.hidden_layers,
                residual=config.arch == "residual",
                batch_norm=config.batch_norm,
            )
        if config.arch == "resnet":
            return ResNet(c, classes, width=config.width, batch_norm=config.batch_norm)
        return CNN(c, classes, image_size=h, width=config.width, batch_norm=config.batch_norm)


def activations(net: nn.Module, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(sum, largest) of the elements each layer outputs for one image: what a training batch
    keeps for backward per image, and what an evaluation batch needs at its peak."""
    sizes: list[int] = []

    def record(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and not isinstance(module, nn.Identity):
            sizes.append(output.numel())

    hooks = [m.register_forward_hook(record) for m in net.modules() if not list(m.children())]
    try:
        net(torch.empty(1, *shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes), max(sizes, default=0)


def estimate(section: str, config: Any) -> Need:
    """The training run's memory need, in named parts."""
    from appliedtorch.data.datasets import dataset

    data = dataset(getattr(config, "dataset", DATASET[section]))
    net = meta_net(section, config, data.shape, len(data.classes))
    weights = sum(p.numel() for p in net.parameters())
    states = {"adam": 2, "adamw": 2, "sgd": 1 if config.momentum > 0 else 0}[config.optimizer]
    per_image, largest = activations(net, data.shape)
    n_train, n_test = (min(n, config.train_limit or n) for n in data.sizes)  # train_limit cuts both
    batch, eval_batch = min(config.batch_size, n_train), min(config.eval_batch_size, n_test)
    name = "Adam" if config.optimizer.startswith("adam") else "SGD"
    return Need(
        what=_what(section, config, weights),
        parts={
            f"weights, gradients and {name} state": (2 + states) * weights * FLOAT,
            f"activations of a batch of {batch}": 3 * per_image * batch * FLOAT,
            f"an evaluation batch of {eval_batch}": 2 * largest * eval_batch * FLOAT,
            "the dataset": (n_train + n_test) * (math.prod(data.shape) + 8),  # uint8, int64 labels
        },
        hint=f"use a smaller net or {section}.batch_size / {section}.eval_batch_size",
    )


def _what(section: str, config: Any, weights: int) -> str:
    if section == "mlp":
        net = f"mlp.hidden_size {config.hidden_size} with mlp.hidden_layers {config.hidden_layers}"
    else:
        net = f"cnn.width {config.width} with cnn.arch {config.arch}"
    return f"{net} ({weights / 1e6:,.0f} M weights), {section}.batch_size {config.batch_size}"


def check_budget(params: Any, section: str) -> torch.device:
    """Refuse, in one line, a classifier run this machine cannot do: a device it lacks,
    torch.compile without its compiler, or more memory than the device has free. Returns the
    device."""
    device = check_device(params.device)
    config = getattr(params, section)
    if config.compile:
        check_compile(f"{section}.compile", device)
    check_memory(estimate(section, config), device)
    return device
