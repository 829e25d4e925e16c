"""One training step (forward, cross-entropy, backward, optimizer step), as the loop repeats it
and the `auto` probe times it.

    >>> step = training_step(net, optimizer, bf16=False, label_smoothing=0.0)
    >>> for images, labels in batches:
    ...     loss = step(images, labels)  # 0-dim, detached; the parameters have stepped

`training_step` picks how:

- `AutogradStep`, for every net and setting: forward (under bf16 autocast when asked), the loss,
  `loss.backward()`, the optimizer's step (through `LeanSteps`).
- `PlainMLPStep`, for the tutorial's MLP as params.yaml trains it (Linear and ReLU layers only,
  float32 on the CPU, no label smoothing, nothing hooked): the gradients written out by hand.
  The net is so small that recording and walking autograd's graph (about twenty nodes a step)
  cost as much as a third of its arithmetic. The hand-written backward calls the aten ops that
  autograd's formulas call, with the same arguments in the same layouts, so every gradient, and
  so every weight, is the same to the bit (tests/test_steps.py holds it to autograd's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize

from appliedtorch.classify.models import MLP
from appliedtorch.classify.optim import LeanSteps

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_aten = torch.ops.aten
_NLL_FORWARD = _aten.nll_loss_forward.default
_NLL_BACKWARD = _aten.nll_loss_backward.default
_LOG_SOFTMAX_BACKWARD = _aten._log_softmax_backward_data.default
_RELU_BACKWARD = _aten.threshold_backward.default
_MEAN, _IGNORE = 1, -100  # nll_loss's reduction (at::Reduction::Mean) and ignore_index


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

    def loss(self, images: torch.Tensor, labels: torch.Tensor, cache: bool = True) -> torch.Tensor:
        """Forward and training loss (`cache`: autocast's weight-cast cache, see `autocast`)."""
        with autocast(images.device, self.bf16, cache):
            logits = self.net(images)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.loss(images, labels)
        self.steps.zero_grad()
        loss.backward()
        self.steps.step()
        return loss.detach()


class PlainMLPStep:
    """A plain `MLP`'s step with its backward written out: x -> relu(x W1^T + b1) -> ... ->
    logits, mean cross-entropy.

    The ops are those autograd's formulas (torch's derivatives.yaml) call: for `addmm(b, a, W^T)`
    the weight's gradient is `g^T a` (W^T is column-major: `mm_mat2_backward` multiplies in that
    order), the input's `g W`, the bias's `g` summed over the batch; ReLU's is
    `threshold_backward(g, output, 0)`; the loss's `nll_loss_backward` and
    `_log_softmax_backward_data`. Gradients are set as `zero_grad(set_to_none=True)` and
    `backward()` would leave them: new tensors, in the parameters' layout.
    """

    def __init__(self, net: MLP, optimizer: torch.optim.Optimizer):
        hidden, out, _ = net.order
        self.layers = [(fc.weight, fc.bias) for fc, _ in hidden] + [(out.weight, out.bias)]
        self.steps = LeanSteps(optimizer)
        self.one = torch.ones(())

    @staticmethod
    def applies(net: nn.Module) -> bool:
        """Whether `net` is an `MLP` of Linear and ReLU layers alone, float32 on the CPU, with no
        hook or parametrisation that autograd's path would honour and this one would not."""
        if type(net) is not MLP or net.residual:
            return False
        hidden, out, dropout = net.order
        if dropout is not None or any(bn is not None for _, bn in hidden):
            return False
        linears = [fc for fc, _ in hidden] + [out]
        if any(type(fc) is not nn.Linear or fc.bias is None for fc in linears):
            return False
        modules = list(net.modules())
        others = [m for m in modules[1:] if all(m is not fc for fc in linears)]
        if any(type(m) is not nn.Identity for m in others) or _hooked(modules):
            return False  # (the Identity: MLP's dropout when it is off, never called)
        params = list(net.parameters())
        return all(
            type(p) is nn.Parameter
            and p.requires_grad
            and p.dtype == torch.float32
            and p.device.type == "cpu"
            and not p._backward_hooks
            and not getattr(p, "_post_accumulate_grad_hooks", None)
            for p in params
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        layers = self.layers
        with torch.no_grad():
            x = images.flatten(1)  # (B, in)
            inputs = []  # each layer's input: ReLU's output, which its backward needs
            for weight, bias in layers[:-1]:
                inputs.append(x)
                x = torch.relu(torch.addmm(bias, x, weight.t()))  # (B, hidden)
            inputs.append(x)
            weight, bias = layers[-1]
            log_p = torch.log_softmax(torch.addmm(bias, x, weight.t()), 1)  # (B, classes)
            loss, total = _NLL_FORWARD(log_p, labels, None, _MEAN, _IGNORE)
            grad = _NLL_BACKWARD(self.one, log_p, labels, None, _MEAN, _IGNORE, total)
            grad = _LOG_SOFTMAX_BACKWARD(grad, log_p, 1, torch.float32)  # (B, classes)
            self.steps.zero_grad()
            for i in range(len(layers) - 1, -1, -1):
                weight, bias = layers[i]
                weight.grad = grad.t().mm(inputs[i])  # (out, in)
                bias.grad = grad.sum(0)  # (out,)
                if i:
                    grad = _RELU_BACKWARD(grad.mm(weight), inputs[i], 0)  # (B, in)
            self.steps.step()
        return loss


def autocast(
    device: torch.device, bf16: bool, cache: bool = True
) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on `device`, or nothing. Without `cache`, no weight's cast is kept for
    reuse within the region (a kept cast would point at a CUDA graph's memory after capture)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=cache)


def _hooked(modules: list[nn.Module]) -> bool:
    """Whether any of `modules` (or every module, globally) has a hook or parametrisation."""
    globals_ = [
        getattr(torch_module, name, None)
        for name in (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    ]
    if any(h is None or len(h) for h in globals_):
        return True
    own = (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
    )
    return any(
        parametrize.is_parametrized(m) or any(getattr(m, name, None) for name in own)
        for m in modules
    )
