"""The speed code that leans on torch's private APIs, in one place behind one switch: the plain
MLP's hand-written step and Adam's step without its per-call Python.

    APPLIEDTORCH_FAST_STEPS=0 dvc repro train_mlp   # torch's public paths only, for every step

Both give the same bits as torch's own paths (tests/test_steps.py, tests/test_lean_steps.py hold
them to autograd and `optimizer.step()`), and both call names torch does not promise to keep
(`torch.ops.aten.*_backward`, `torch._fused_adam_`, the optimizer's and modules' hook dicts). After
a torch upgrade this file and those two tests are what to check; where they fail, the switch
turns the code off until it is fixed. `PlainMLPStep` is for the tutorial's MLP as params.yaml
trains it: the net is so small that recording and walking autograd's graph (about twenty nodes a
step) costs as much as a third of its arithmetic. `LeanSteps` replays the calls `Adam.step` would
make, with the state lists kept: on a small net torch's step spends more time in Python than in
its fused CPU kernel.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.optim.optimizer as torch_optimizer
from torch import nn
from torch.nn.modules import module as torch_module
from torch.nn.utils import parametrize
from torch.optim.adam import adam

from appliedtorch.classify.nets.models import MLP

SWITCH = "APPLIEDTORCH_FAST_STEPS"

_aten = torch.ops.aten
_NLL_FORWARD = _aten.nll_loss_forward.default
_NLL_BACKWARD = _aten.nll_loss_backward.default
_LOG_SOFTMAX_BACKWARD = _aten._log_softmax_backward_data.default
_RELU_BACKWARD = _aten.threshold_backward.default
_MEAN, _IGNORE = 1, -100  # nll_loss's reduction (at::Reduction::Mean) and ignore_index


def enabled() -> bool:
    """Whether the fast paths may be taken (`APPLIEDTORCH_FAST_STEPS=0` turns them off), read when
    a step is built, never on import."""
    return os.environ.get(SWITCH, "1").strip() != "0"


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
        if not enabled() or type(net) is not MLP or net.residual:
            return False
        hidden, out, dropout = net.order
        if dropout is not None or any(bn is not None for _, bn in hidden):
            return False
        linears = [fc for fc, _ in hidden] + [out]
        if any(type(fc) is not nn.Linear or fc.bias is None for fc in linears):
            return False
        modules = list(net.modules())
        others = [m for m in modules[1:] if all(m is not fc for fc in linears)]
        if any(type(m) is not nn.Identity for m in others) or _modules_hooked(modules):
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


class LeanSteps:
    """`zero_grad(set_to_none=True)` and `step()` of `optimizer`, with the same arithmetic and
    less Python per call where that is known to be safe.

    On a small net torch's `Adam.step` (and AdamW's) spends more time in Python than in its fused
    CPU kernel: the step wrapper (profiler label, hook lookups, grad-mode switches), then
    `_init_group` rebuilding the state lists from dicts, then the dispatch to the kernel, at every
    step. Here the first step of each `LeanSteps` is the optimizer's own (it creates the state);
    after it the state lists are kept and each step makes the calls `Adam.step` would make, with
    the same arguments on the same tensors: the same bits. Everything else takes
    `optimizer.step()`: SGD, a GPU, step
    hooks, a parameter without a gradient, a state replaced by `load_state_dict`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.lean = enabled() and _lean_possible(optimizer, self.params)
        self.groups: list[tuple[dict[str, Any], list[list[torch.Tensor]]]] | None = None
        self.state: Any = None

    def zero_grad(self) -> None:
        """`optimizer.zero_grad(set_to_none=True)`."""
        if not self.lean:
            self.optimizer.zero_grad(set_to_none=True)
            return
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """`optimizer.step()`."""
        optimizer = self.optimizer
        if (
            self.groups is None
            or optimizer.state is not self.state
            or len(self.groups) != len(optimizer.param_groups)
            or _optimizer_hooked(optimizer)
        ):
            optimizer.step()
            self.groups = self._state_lists() if self.lean else None
            return
        grads = [[p.grad for p in lists[0]] for _, lists in self.groups]
        if any(g is None for group_grads in grads for g in group_grads):
            self.groups = None  # a parameter out of this step: torch's way, for every group
            optimizer.step()
            return
        with torch.no_grad():
            for (group, lists), group_grads in zip(self.groups, grads, strict=True):
                _adam(group, lists, group_grads)

    def _state_lists(self) -> list[tuple[dict[str, Any], list[list[torch.Tensor]]]] | None:
        """Per group, the lists `Adam._init_group` builds, made once (None: some parameter has no
        state yet, so the optimizer's own step must make it)."""
        self.state = self.optimizer.state
        groups = []
        for group in self.optimizer.param_groups:
            states = [self.state.get(p) for p in group["params"]]
            if any(not s for s in states):
                return None
            lists: list[list[torch.Tensor]] = [
                list(group["params"]),
                [s["exp_avg"] for s in states],  # type: ignore[index]
                [s["exp_avg_sq"] for s in states],  # type: ignore[index]
                [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else [],  # type: ignore[index]
                [s["step"] for s in states],  # type: ignore[index]
            ]
            groups.append((group, lists))
        return groups


def _adam(group: dict[str, Any], lists: list[list[torch.Tensor]], grads: list[Any]) -> None:
    """One group's step, with the arguments `Adam.step` passes. Fused with plain-number settings
    (make_optimizer's on the CPU), the two ops torch's fused path runs, called directly: its
    Python dispatch around them was a tenth of the lean step."""
    params, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = lists
    tensors = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps)
    lr, decay, eps = group["lr"], group["weight_decay"], group["eps"]
    (beta1, beta2), amsgrad, maximize = group["betas"], group["amsgrad"], group["maximize"]
    if group["fused"] and all(isinstance(v, float | int) for v in (lr, beta1, beta2, decay, eps)):
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        kernel(
            *tensors,
            lr=float(lr),
            beta1=float(beta1),
            beta2=float(beta2),
            weight_decay=float(decay),
            eps=float(eps),
            amsgrad=amsgrad,
            maximize=maximize,
        )
        return
    adam(
        *tensors,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=decay,
        eps=eps,
        amsgrad=amsgrad,
        maximize=maximize,
        has_complex=False,
        foreach=group["foreach"],
        capturable=group["capturable"],
        differentiable=False,
        fused=group["fused"],
        grad_scale=None,
        found_inf=None,
        decoupled_weight_decay=group["decoupled_weight_decay"],
    )


def _lean_possible(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    """Adam or AdamW exactly, on float32 CPU tensors (torch's fused path groups tensors by device
    and dtype: here there is one group), not differentiable, no scaler attached."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    if any(hasattr(optimizer, name) for name in ("grad_scale", "found_inf")):
        return False
    return (
        all(
            not g["differentiable"] and "decoupled_weight_decay" in g
            for g in optimizer.param_groups
        )
        and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
        and not _optimizer_hooked(optimizer)
    )


def _optimizer_hooked(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any step hook is registered (or torch no longer keeps them where we look)."""
    hooks = [
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        getattr(torch_optimizer, "_global_optimizer_pre_hooks", None),
        getattr(torch_optimizer, "_global_optimizer_post_hooks", None),
    ]
    return any(h is None or len(h) for h in hooks)


def _modules_hooked(modules: list[nn.Module]) -> bool:
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
