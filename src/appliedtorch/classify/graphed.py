"""A training step captured in a CUDA graph and replayed for every batch: the GPU at its launch floor.

    >>> step = GraphedStep(net, optimizer, bf16=True)      # scheduler, losses: as in the loop
    >>> for images, labels in batches:
    ...     loss = step(images, labels)                    # (), on the device; no host sync

A small net's step is dozens of small kernels, each launched from Python; on a fast GPU the
launches, not the arithmetic, set the step time. Captured once in a CUDA graph
(`torch.cuda.graph`), the whole step (forward, loss, backward, optimizer) is one launch. A graph
replays fixed kernels on fixed memory, so:

- each batch is copied into static input buffers; a batch of another shape than the first (the
  short last one) runs eagerly;
- the optimizer must be capture-safe: fused (the loop's default on CUDA) or `capturable`, and
  its learning rate a tensor on the device, which torch's schedulers then update in place;
- the first `warmup` steps run eagerly on a side stream (what capture requires: cuBLAS and
  cuDNN pick and allocate their workspaces, the optimizer makes its state) — real steps on
  real batches, so nothing is skipped;
- autocast's weight-cast cache is off (a cached cast would point at memory of the capture);
- dropout's random numbers come from the device's default generator, which advances at each
  replay (torch registers it with the graph).

Everywhere else (the CPU, a DistributedDataParallel module, `enabled=False`) every step runs
eagerly: the arithmetic of `loop.train_one_epoch`, one call per batch.
"""

from __future__ import annotations

import torch
from torch import nn

from appliedtorch.classify.steps import AutogradStep

WARMUP_STEPS = 3  # eager steps before capture (PyTorch's whole-network example uses 3)


class GraphedStep:
    """`step(images, labels)` trains one batch and returns its loss (a 0-dim tensor)."""

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        bf16: bool = False,
        label_smoothing: float = 0.0,
        enabled: bool = True,
        warmup: int = WARMUP_STEPS,
    ):
        self.net, self.optimizer, self.warmup = net, optimizer, warmup
        self.autograd = AutogradStep(net, optimizer, bf16=bf16, label_smoothing=label_smoothing)
        device = next(net.parameters()).device
        distributed = isinstance(net, nn.parallel.DistributedDataParallel)
        self.graphed = enabled and device.type == "cuda" and not distributed
        self.graph: torch.cuda.CUDAGraph | None = None
        self.shape: tuple[torch.Size, torch.Size] | None = None
        self.warmed = 0
        if self.graphed:
            make_capturable(optimizer, device)
            self.side = torch.cuda.Stream(device)

    def eager(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One step as `loop.train_one_epoch` takes it (autograd's)."""
        self.net.train()
        return self.autograd(images, labels)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shape = (images.shape, labels.shape)
        self.shape = self.shape or shape  # the first batch's: a full one
        if not self.graphed or shape != self.shape:
            return self.eager(images, labels)
        if self.graph is None and self.warmed < self.warmup:
            self.warmed += 1
            return self._on_side_stream(images, labels)
        if self.graph is None:
            self._capture(images, labels)
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self.graph.replay()  # type: ignore[union-attr]
        return self.static_loss.clone()

    def _on_side_stream(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            loss = self.eager(images, labels)
        torch.cuda.current_stream().wait_stream(self.side)
        return loss

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Record the step on static copies of this batch (capture runs nothing: the caller
        replays it next)."""
        self.images = images.clone(memory_format=torch.preserve_format)
        self.labels = labels.clone()
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)  # the graph's backward allocates the grads
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss = self.autograd.loss(self.images, self.labels, cache=False)
            loss.backward()
            self.optimizer.step()
        self.static_loss = loss.detach()


def make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make `optimizer` safe to capture: learning rates as device tensors (schedulers then fill
    them in place) and, unless fused, `capturable` (its step counters on the device)."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        if "capturable" in group and not group.get("fused"):
            group["capturable"] = True
