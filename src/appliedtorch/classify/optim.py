"""The classifiers' optimizers and learning-rate schedules, built from their params section.

optimizer = make_optimizer(model, params.cnn, device)
scheduler = make_scheduler(optimizer, params.cnn, steps_per_epoch=len(train_batches))
steps = LeanSteps(optimizer)  # steps.zero_grad(), steps.step(): the optimizer's, for less
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
import torch.optim.optimizer as torch_optimizer
from torch import nn
from torch.optim.adam import adam

if TYPE_CHECKING:
    from appliedtorch.classify.params import ClassifierParams

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(
    model: nn.Module, config: ClassifierParams, device: torch.device
) -> torch.optim.Optimizer:
    """The configured optimizer; the fused kernel (one op for all parameters) where this build
    has it. Weight decay applies to the weights of convolutions and linear layers (2-D and up),
    not to biases and norm scales (nanoGPT's configure_optimizers)."""
    params: Any = list(model.parameters())
    if config.weight_decay:
        params = [
            {"params": [p for p in params if p.dim() >= 2]},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
    # weight_decay always given: AdamW's own default is 0.01, on every parameter.
    kwargs: dict[str, Any] = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "sgd":
        kwargs.update(momentum=config.momentum, nesterov=config.nesterov)
    cls = _OPTIMIZERS[config.optimizer]
    try:
        return cls(params, **kwargs, fused=device.type in ("cpu", "cuda"))
    except (RuntimeError, TypeError):  # fused not available for this device/build
        return cls(params, **kwargs)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: ClassifierParams, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The configured learning-rate schedule, stepped once per batch (torch's own schedulers).

    step: x gamma after every step_size epochs (counted from the end of any warm-up), the
    tutorial's StepLR counted in steps; cosine: to 0 at the last step; onecycle: OneCycleLR's
    schedule (lr/25 up to lr over the warm-up, then cosine down to lr/250000), momentum left as
    configured. A warm-up (not onecycle's) ramps linearly from lr/100.
    """
    sched = torch.optim.lr_scheduler
    total = config.epochs * steps_per_epoch
    warmup = round((config.warmup_epochs or 0) * steps_per_epoch)
    if config.scheduler == "onecycle":
        rise = round(0.3 * total) if config.warmup_epochs is None else warmup
        return sched.LambdaLR(optimizer, partial(one_cycle, total=total, rise=rise))
    ramp = sched.LinearLR(optimizer, start_factor=0.01, total_iters=warmup) if warmup else None
    main = None
    if config.scheduler == "step" and config.step_size:
        main = sched.StepLR(optimizer, config.step_size * steps_per_epoch, config.gamma)
    elif config.scheduler == "cosine":
        main = sched.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    if ramp is None or main is None:
        return ramp or main
    return sched.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def one_cycle(step: int, total: int, rise: int, div: float = 25.0, final_div: float = 1e4) -> float:
    """The factor of lr at `step` of torch's OneCycleLR (cosine, two phases): 1/div at step 0, 1
    at step rise - 1 (step 0 for a rise of one step), 1/(div * final_div) at the last step.
    torch's class divides by zero when a phase is shorter than two steps (a short test run); this
    is the same curve for any lengths (tests/test_extensions.py compares the two)."""
    peak = min(max(rise - 1, 0), total - 1)
    if step <= peak:
        start, end, pct = 1 / div, 1.0, step / peak if peak else 1.0
    else:
        start, end, pct = 1.0, 1 / (div * final_div), (step - peak) / max(total - 1 - peak, 1)
    return end + (start - end) * (1 + math.cos(math.pi * min(pct, 1.0))) / 2


class LeanSteps:
    """`zero_grad(set_to_none=True)` and `step()` of `optimizer`, with the same arithmetic and
    less Python per call where that is known to be safe.

    On a small net torch's `Adam.step` (and AdamW's) spends more time in Python than in its fused
    CPU kernel: the step wrapper (profiler label, hook lookups, grad-mode switches), then
    `_init_group` rebuilding the state lists from dicts, then the dispatch to the kernel, at every
    step. Here the first step of each `LeanSteps` is the optimizer's own (it creates the state);
    after it the state lists are kept and each step makes the calls `Adam.step` would make, with
    the same arguments on the same tensors: the same bits. Everything else takes
    `optimizer.step()`: SGD, a GPU (where the whole step is better captured: graphed.py), step
    hooks, a parameter without a gradient, a state replaced by `load_state_dict`.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.lean = _lean_possible(optimizer, self.params)
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
            or _hooked(optimizer)
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
        and not _hooked(optimizer)
    )


def _hooked(optimizer: torch.optim.Optimizer) -> bool:
    """Whether any step hook is registered (or torch no longer keeps them where we look)."""
    hooks = [
        getattr(optimizer, "_optimizer_step_pre_hooks", None),
        getattr(optimizer, "_optimizer_step_post_hooks", None),
        getattr(torch_optimizer, "_global_optimizer_pre_hooks", None),
        getattr(torch_optimizer, "_global_optimizer_post_hooks", None),
    ]
    return any(h is None or len(h) for h in hooks)
