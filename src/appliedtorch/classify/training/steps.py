"""One training step (forward, cross-entropy, backward, optimizer step), as the loop repeats it
and the `auto` probe times it.

    >>> step = training_step(net, optimizer, bf16=False, label_smoothing=0.0)
    >>> for images, labels in batches:
    ...     loss = step(images, labels)  # 0-dim, detached; the parameters have stepped

`training_step` picks how: `AutogradStep` for every net and setting (forward under bf16
autocast when asked, the loss, `loss.backward()`, the optimizer's step through `fast.LeanSteps`),
or `fast.PlainMLPStep` for the tutorial's plain MLP as params.yaml trains it: its backward
written out by hand, the same to the bit (see fast.py and its switch).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from appliedtorch.classify.training.fast import LeanSteps, PlainMLPStep

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def training_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    bf16: bool = False,
    label_smoothing: float = 0.0,
) -> Step:
    """The step for this net and setting: by hand where `PlainMLPStep` applies, else autograd's."""
    if not bf16 and not label_smoothing and PlainMLPStep.applies(net):
        return PlainMLPStep(net, optimizer)  # type: ignore[arg-type]
    return AutogradStep(net, optimizer, bf16=bf16, label_smoothing=label_smoothing)


class AutogradStep:
    """The step every net can take: autograd differentiates the loss."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        bf16: bool = False,
        label_smoothing: float = 0.0,
    ):
        self.net, self.bf16, self.label_smoothing = net, bf16, label_smoothing
        self.steps = LeanSteps(optimizer)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Forward and training loss."""
        with autocast(images.device, self.bf16):
            logits = self.net(images)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss(images, labels)
        self.steps.zero_grad()
        loss.backward()
        self.steps.step()
        return loss.detach()


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device`, or nothing."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
