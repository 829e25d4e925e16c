"""The classifiers' optimizers and learning-rate schedules, built from their params section.

optimizer = make_optimizer(model, params.cnn, device)
scheduler = make_scheduler(optimizer, params.cnn, steps_per_epoch=len(train_batches))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from appliedtorch.classify.params import ClassifierParams

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(
    model: nn.Module | Sequence[torch.Tensor],
    config: ClassifierParams,
    device: torch.device,
    *,
    members_dim: bool = False,
) -> torch.optim.Optimizer:
    """The configured optimizer; the fused kernel (one op for all parameters) where this build
    has it. Weight decay applies to the weights of convolutions and linear layers (2-D and up),
    not to biases and norm scales (nanoGPT's configure_optimizers). `members_dim`: the tensors
    are members' parameters stacked along a first dimension (runs/together.py), which the
    weight-decay rule does not count."""
    params: Any = list(model.parameters() if isinstance(model, nn.Module) else model)
    if config.weight_decay:
        weights = 3 if members_dim else 2
        params = [
            {"params": [p for p in params if p.dim() >= weights]},
            {"params": [p for p in params if p.dim() < weights], "weight_decay": 0.0},
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
