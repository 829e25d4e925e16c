"""`LeanSteps` (classify/training/fast.py): the optimizer's zero_grad and step, to the bit, for less."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.params import MLPParams
from appliedtorch.classify.training.batches import Batches, Normalizer
from appliedtorch.classify.training.fast import LeanSteps
from appliedtorch.classify.training.loop import StepLosses, train_one_epoch
from appliedtorch.classify.training.optim import make_optimizer


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def _groups(net: nn.Module) -> list[dict]:
    """Two groups, as make_optimizer makes them with weight decay: weights, then the rest."""
    params = list(net.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


OPTIMIZERS = {
    "adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),
    "adam amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, fused=True),
    "adamw decay": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-1, momentum=0.9),
}


def _train(make, lean: bool, steps: int = 12) -> tuple[list[torch.Tensor], dict]:
    net = _net()
    optimizer = make(_groups(net))
    # A schedule changes lr at every step: each lean step must read the group's current lr.
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, 1.0, 0.1, total_iters=steps)
    stepper = LeanSteps(optimizer)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 12, generator=gen)
        y = torch.randint(0, 3, (8,), generator=gen)
        loss = F.cross_entropy(net(x), y)
        if lean:
            stepper.zero_grad()
            loss.backward()
            stepper.step()
        else:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return [p.detach().clone() for p in net.parameters()], optimizer.state_dict()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_lean_steps_give_the_optimizers_own_numbers_to_the_bit(name):
    (params, state), (lean_params, lean_state) = (_train(OPTIMIZERS[name], lean) for lean in (0, 1))
    for want, got in zip(params, lean_params, strict=True):
        assert torch.equal(want, got)
    for key, want in state["state"].items():
        for field, tensor in want.items():
            assert torch.equal(tensor, lean_state["state"][key][field]), (key, field)
    assert [g["lr"] for g in state["param_groups"]] == [g["lr"] for g in lean_state["param_groups"]]


def _count_steps(monkeypatch, optimizer: torch.optim.Optimizer) -> list[int]:
    """A list that grows by one at each call of `optimizer.step()` (torch's own step)."""
    calls: list[int] = []
    monkeypatch.setattr(
        optimizer, "step", lambda: calls.append(1) or type(optimizer).step(optimizer)
    )
    return calls


def _stepped(optimizer: torch.optim.Optimizer, net: nn.Module, stepper: LeanSteps) -> None:
    stepper.zero_grad()
    net(torch.ones(2, 12)).sum().backward()
    stepper.step()


def test_adam_on_the_cpu_is_stepped_leanly_after_its_first_step(monkeypatch):
    net = _net()
    optimizer = torch.optim.Adam(net.parameters(), fused=True)
    stepper = LeanSteps(optimizer)
    calls = _count_steps(monkeypatch, optimizer)
    for _ in range(4):
        _stepped(optimizer, net, stepper)
    assert stepper.lean and len(calls) == 1  # the first step made the state; three were lean
    assert int(optimizer.state[next(net.parameters())]["step"]) == 4


def test_a_hook_a_reloaded_state_or_a_missing_gradient_takes_the_optimizers_step(monkeypatch):
    net = _net()
    optimizer = torch.optim.Adam(net.parameters(), fused=True)
    stepper = LeanSteps(optimizer)
    calls = _count_steps(monkeypatch, optimizer)
    _stepped(optimizer, net, stepper)
    _stepped(optimizer, net, stepper)
    assert len(calls) == 1

    hooked = []
    handle = optimizer.register_step_post_hook(lambda *a: hooked.append(1))
    _stepped(optimizer, net, stepper)
    assert len(calls) == 2 and hooked  # torch's step runs the hook
    handle.remove()

    optimizer.load_state_dict(optimizer.state_dict())  # new state tensors: the kept lists are stale
    _stepped(optimizer, net, stepper)
    assert len(calls) == 3
    first = next(net.parameters())
    assert int(optimizer.state[first]["step"]) == 4  # counted in the reloaded state

    stepper.zero_grad()
    net[2](torch.ones(2, 16)).sum().backward()  # the first layer gets no gradient
    stepper.step()
    assert len(calls) == 4 and int(optimizer.state[first]["step"]) == 4  # torch skips it
    assert int(optimizer.state[net[2].weight]["step"]) == 5


def test_sgd_and_differentiable_adam_always_take_the_optimizers_step():
    net = _net()
    for optimizer in (
        torch.optim.SGD(net.parameters(), lr=0.1),
        torch.optim.Adam(net.parameters(), differentiable=True),
    ):
        assert not LeanSteps(optimizer).lean


def test_the_training_loop_steps_leanly_after_each_epochs_first_step(monkeypatch):
    torch.manual_seed(0)
    model = build_model("mlp", in_features=16, hidden_size=16, num_classes=4)
    optimizer = make_optimizer(model, MLPParams(), torch.device("cpu"))
    images = torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8)
    batches = Batches(
        images,
        torch.randint(0, 4, (100,)),
        32,
        Normalizer((0.5,), (0.5,)),
        shuffle=torch.Generator(),
    )
    calls = _count_steps(monkeypatch, optimizer)
    for epoch in (1, 2):
        train_one_epoch(model, batches, optimizer, StepLosses(batches, epoch, 1e-3, "mlp"))
    assert len(calls) == 2  # one of each epoch's 4 steps; the other 3 lean
    assert int(optimizer.state[model.fc1.weight]["step"]) == 8
