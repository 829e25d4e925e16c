"""The CUDA-graph training step (classify/graphed.py): eager on the CPU it is the loop's step."""

from __future__ import annotations

import pytest
import torch

from appliedtorch.classify.batches import Batches, Normalizer
from appliedtorch.classify.graphed import GraphedStep, make_capturable
from appliedtorch.classify.loop import StepLosses, train_one_epoch
from appliedtorch.classify.models import build_model


def setup(device: str = "cpu", dropout: float = 0.3):
    """A small MLP, fused Adam with a per-step StepLR, and 100 samples in batches of 32."""
    torch.manual_seed(0)
    model = build_model("mlp", in_features=16, hidden_size=16, num_classes=4, dropout=dropout)
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
    images = torch.randint(0, 256, (100, 1, 4, 4), dtype=torch.uint8)
    labels = torch.randint(0, 4, (100,))
    shuffle = torch.Generator(device=device).manual_seed(0)
    normalize = Normalizer((0.5,), (0.5,), device)
    batches = Batches(images, labels, 32, normalize, shuffle=shuffle)  # the last batch: 4
    return model, optimizer, scheduler, batches


@pytest.mark.parametrize("bf16", [False, True])
def test_eager_step_on_the_cpu_gives_the_loops_numbers(bf16):
    model, optimizer, scheduler, batches = setup()
    loop_losses = []
    for epoch in (1, 2):
        losses = StepLosses(batches, epoch, 1e-2, "mlp")
        train_one_epoch(model, batches, optimizer, losses, bf16=bf16, scheduler=scheduler)
        loop_losses += losses.values.tolist()
    expected = model.state_dict()

    model, optimizer, scheduler, batches = setup()
    step = GraphedStep(model, optimizer, bf16=bf16)
    assert not step.graphed  # the CPU: eager
    step_losses = []
    for _ in (1, 2):
        for images, labels in batches:
            step_losses.append(float(step(images, labels)))
            scheduler.step()
    assert step_losses == loop_losses
    for key, tensor in expected.items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_a_capturable_optimizers_lr_is_a_tensor_the_scheduler_fills():
    model, optimizer, scheduler, batches = setup()
    make_capturable(optimizer, torch.device("cpu"))
    lr = optimizer.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor)
    step = GraphedStep(model, optimizer)
    for images, labels in batches:
        step(images, labels)
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] is lr  # the same memory: a graph sees the new value
    assert float(lr) == pytest.approx(1e-2 * 0.5)  # 4 steps: halved once


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU: the step is captured on CUDA only"
)
def test_graphed_step_on_cuda_matches_eager_steps():
    results = []
    for enabled in (False, True):
        model, optimizer, scheduler, batches = setup("cuda", dropout=0.0)
        if not enabled:  # the same lr as a tensor, so both runs round the lr alike
            make_capturable(optimizer, torch.device("cuda"))
        step = GraphedStep(model, optimizer, enabled=enabled)
        losses = []
        for _ in range(3):
            for images, labels in batches:
                losses.append(step(images, labels))
                scheduler.step()
        assert (step.graph is not None) == enabled
        results.append((torch.stack(losses).cpu(), model.state_dict()))
    (eager_losses, eager), (graph_losses, graphed) = results
    torch.testing.assert_close(graph_losses, eager_losses, rtol=1e-5, atol=1e-6)
    for key, tensor in eager.items():
        torch.testing.assert_close(graphed[key], tensor, rtol=1e-5, atol=1e-6)
