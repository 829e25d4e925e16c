"""The training step (classify/training/steps.py): the plain MLP's hand-written backward is autograd's, to
the bit, and every net or setting it does not cover takes autograd's step."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from appliedtorch.classify.nets.models import CNN, MLP
from appliedtorch.classify.params import MLPParams
from appliedtorch.classify.training import fast, steps, tuning
from appliedtorch.classify.training.batches import Batches, Normalizer
from appliedtorch.classify.training.fast import PlainMLPStep
from appliedtorch.classify.training.loop import StepLosses, train_one_epoch
from appliedtorch.classify.training.optim import make_optimizer
from appliedtorch.classify.training.steps import AutogradStep, training_step
from appliedtorch.machine import autotune

SHAPES = {
    "tutorial": {},
    "one unit": {"in_features": 5, "hidden_size": 1, "hidden_layers": 1, "num_classes": 2},
    "deep": {"in_features": 12, "hidden_size": 7, "hidden_layers": 4, "num_classes": 3},
}
OPTIMIZERS = {
    "adam": lambda net: torch.optim.Adam(net.parameters(), lr=1e-2, fused=True),
    "adamw decay": lambda net: make_optimizer(
        net, MLPParams(optimizer="adamw", weight_decay=0.1, lr=1e-2), torch.device("cpu")
    ),
    "sgd": lambda net: torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
}


def _batches(shape: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of the net's input as the loop gives them: (B, C, H, W) for the tutorial's, a
    short one and one of a single sample among them."""
    gen = torch.Generator().manual_seed(3)
    size = (1, 28, 28) if "in_features" not in shape else (shape["in_features"],)
    classes = shape.get("num_classes", 10)
    return [
        (3 * torch.randn(b, *size, generator=gen), torch.randint(0, classes, (b,), generator=gen))
        for b in (64, 64, 1, 17, 64, 64)
    ]


def _run(kind, shape: dict, optimizer: str):
    torch.manual_seed(0)
    net = MLP(**shape)
    opt = OPTIMIZERS[optimizer](net)
    step = kind(net, opt)
    losses, grads = [], []
    for images, labels in _batches(shape):
        losses.append(step(images, labels))
        grads.append([p.grad.clone() for p in net.parameters()])
    return losses, grads, [p.detach().clone() for p in net.parameters()], opt.state_dict()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_hand_written_step_is_autograds_to_the_bit(shape, optimizer):
    want = _run(AutogradStep, SHAPES[shape], optimizer)
    got = _run(PlainMLPStep, SHAPES[shape], optimizer)
    for step, (loss, grads) in enumerate(zip(want[0], want[1], strict=True)):
        assert torch.equal(got[0][step], loss), step
        for i, grad in enumerate(grads):
            assert got[1][step][i].stride() == grad.stride(), (step, i)
            assert torch.equal(got[1][step][i], grad), (step, i)
    for i, param in enumerate(want[2]):
        assert torch.equal(got[2][i], param), i
    for key, state in want[3]["state"].items():
        for field, tensor in state.items():
            assert torch.equal(got[3]["state"][key][field], tensor), (key, field)


def test_the_hand_written_step_learns():
    """Not only equal to autograd's: the loss of a fixed batch falls as it trains."""
    torch.manual_seed(0)
    net = MLP(in_features=12, hidden_size=16, num_classes=3)
    step = PlainMLPStep(net, torch.optim.Adam(net.parameters(), lr=1e-2))
    images, labels = _batches(SHAPES["deep"])[0]
    losses = [float(step(images, labels)) for _ in range(60)]
    assert losses[-1] < 0.3 * losses[0]


def _hooked_forward(net: MLP) -> MLP:
    net.fc2.register_forward_hook(lambda module, args, out: 2 * out)
    return net


def _hooked_param(net: MLP) -> MLP:
    net.fc1.weight.register_hook(lambda grad: 0 * grad)
    return net


def _accumulate_hooked(net: MLP) -> MLP:
    net.fc1.weight.register_post_accumulate_grad_hook(lambda p: None)
    return net


def _weight_norm(net: MLP) -> MLP:
    parametrizations.weight_norm(net.fc1)
    return net


def _frozen(net: MLP) -> MLP:
    net.fc1.weight.requires_grad_(False)
    return net


AUTOGRAD_CASES = {
    "bf16": (lambda: MLP(), {"bf16": True}),
    "label smoothing": (lambda: MLP(), {"label_smoothing": 0.1}),
    "residual": (lambda: MLP(residual=True), {}),
    "batch norm": (lambda: MLP(batch_norm=True), {}),
    "dropout": (lambda: MLP(dropout=0.2), {}),
    "a CNN": (lambda: CNN(), {}),
    "float64": (lambda: MLP().double(), {}),
    "a forward hook": (lambda: _hooked_forward(MLP()), {}),
    "a gradient hook": (lambda: _hooked_param(MLP()), {}),
    "a post-accumulate hook": (lambda: _accumulate_hooked(MLP()), {}),
    "weight norm": (lambda: _weight_norm(MLP()), {}),
    "a frozen weight": (lambda: _frozen(MLP()), {}),
    "a wrapper": (lambda: nn.Sequential(MLP()), {}),
}


@pytest.mark.parametrize("case", AUTOGRAD_CASES)
def test_what_the_hand_written_step_does_not_cover_takes_autograds(case):
    make, settings = AUTOGRAD_CASES[case]
    net = make()
    params = [p for p in net.parameters() if p.requires_grad]
    step = training_step(net, torch.optim.Adam(params), **settings)
    assert type(step) is AutogradStep
    assert type(training_step(MLP(), torch.optim.Adam(MLP().parameters()))) is PlainMLPStep


def test_a_global_module_hook_takes_autograds_step():
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: out)
    try:
        assert not PlainMLPStep.applies(MLP())
    finally:
        handle.remove()
    assert PlainMLPStep.applies(MLP())


def test_a_forward_hook_is_honoured():
    """Why hooks decide the path: the hooked net's step takes the loss its hook makes."""
    images, labels = _batches(SHAPES["deep"])[0]
    losses = []
    for hooked in (False, True):
        torch.manual_seed(0)
        net = MLP(in_features=12, num_classes=3)
        net = _hooked_forward(net) if hooked else net
        with torch.no_grad():
            expected = nn.functional.cross_entropy(net(images), labels)
        losses.append(training_step(net, torch.optim.SGD(net.parameters(), lr=0.1))(images, labels))
        assert torch.equal(losses[-1], expected)
    assert not torch.equal(*losses)


def test_the_loop_and_the_probe_step_the_plain_mlp_by_hand(monkeypatch, tmp_path):
    calls = []
    own = PlainMLPStep.__call__
    monkeypatch.setattr(
        PlainMLPStep, "__call__", lambda self, x, y: calls.append(len(x)) or own(self, x, y)
    )
    torch.manual_seed(0)
    net = MLP(in_features=12, num_classes=3)

    def make(m: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(m.parameters(), fused=True)

    optimizer = make(net)
    images = torch.randint(0, 256, (150, 1, 3, 4), dtype=torch.uint8)
    labels = torch.randint(0, 3, (150,))
    shuffle = torch.Generator().manual_seed(0)
    batches = Batches(images, labels, 64, Normalizer((0.5,), (0.5,)), shuffle=shuffle)
    train_one_epoch(net, batches, optimizer, StepLosses(batches, 1, 1e-3, "mlp"))
    assert calls == [64, 64, 22]
    calls.clear()
    steps.training_step(net, optimizer, bf16=True)(*next(iter(batches)))
    assert calls == []  # bf16: autograd's

    # the probe times the step the run will take: fp32 by hand, bf16 by autograd
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(autotune.ENABLE_ENV, raising=False)
    monkeypatch.setattr(autotune, "load_average", lambda: 0.0)  # a busy machine would not time
    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)
    batch = (torch.randn(8, 1, 3, 4), torch.randint(0, 3, (8,)))
    timing = {"warmup": 1, "rounds": 2, "steps": 2}
    choice = tuning.tune(net, make, batch, torch.device("cpu"), bf16="auto", threads=1, **timing)
    assert choice.probe is not None and len(choice.probe.seconds) == 2
    assert calls == [8] * 5  # fp32's warm-up and timed steps


def test_the_switch_turns_every_private_path_off(monkeypatch):
    """APPLIEDTORCH_FAST_STEPS=0: torch's public autograd step and `optimizer.step()` only."""
    net = MLP()
    optimizer = torch.optim.Adam(net.parameters())
    assert type(training_step(net, optimizer)) is PlainMLPStep
    monkeypatch.setenv(fast.SWITCH, "0")
    step = training_step(net, optimizer)
    assert type(step) is AutogradStep
    assert not step.steps.lean
