"""The GPU figures of issue 35 in one run: epochs, % of peak, N seeds, the captured step.

    python benchmarks/gpu.py --json reports/gpu.json           # on the GPU it finds (cuda:0)
    python benchmarks/gpu.py --quick                           # tiny sizes, any device: a smoke run

On one device, in one process, on synthetic data of the upstream sizes (MNIST 60,000, CIFAR-10
50,000 training images; `--quick`: 1 %):

- **epochs**: the tutorial's loop (`loops.tutorial_epoch`: PIL transforms in a DataLoader,
  batches moved to the device one by one; its first `--tutorial-batches` batches, extrapolated)
  against the project's `train_classifier` with params.yaml's `mlp` and `cnn` sections (one whole
  epoch), each with its achieved GFLOP/s and % of the card's data-sheet peak (`flops.epoch_arithmetic`).
- **members**: `seeds: N` members one after another against together (one vmapped model), and
  one seed alone (`members.measure`): the N-seed cost against one seed's.
- **captured step**: the MLP's training step (forward, backward, Adam with `capturable=True`) in
  eager mode against the same step captured once as a CUDA graph and replayed, from the same
  weights on the same batches: ms per step and the largest weight difference after the steps.
  Also `torch.compile(mode="reduce-overhead")` of the net in the project's step. CUDA only; on
  another device these report why they were skipped. A variant that fails reports its error.

Prints one JSON object (and writes it with `--json`). Nothing here is a claim until a run's JSON
is recorded with the card's name (docs/performance.md).
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.training.loop import model_args_for, net_name
from appliedtorch.classify.training.steps import AutogradStep
from appliedtorch.core.utils import write_json
from appliedtorch.data.loading import ImageData
from appliedtorch.params import load_params

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flops
import loops
import members

Step = Callable[[torch.Tensor, torch.Tensor], Any]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epochs(
    arch: str, data: ImageData, params_path: str, device: str, tutorial_batches: int
) -> dict[str, Any]:
    """One epoch of the tutorial's loop (extrapolated from its first batches) and the project's."""
    config = loops.timed_section(load_params(params_path), arch)
    config = config.model_copy(update={"dataset": data.name})
    full = -(-len(data.train_images) // config.batch_size)
    _, seconds, done = loops.tutorial_epoch(data, config, tutorial_batches, device)
    tutorial = seconds * full / done
    project, accuracy, _, bf16 = loops.project_epoch(data, config, None, device)
    fmt = "bf16" if bf16 else "fp32"
    threads = torch.get_num_threads()
    return {
        "tutorial_epoch_seconds": tutorial,
        "tutorial_batches_timed": done,
        "project_epoch_seconds": project,
        "speedup": tutorial / project,
        "project_accuracy": accuracy,
        "project_bf16": bf16,
        "tutorial_arithmetic": flops.epoch_arithmetic(data, config, tutorial, threads, fmt, device),
        "project_arithmetic": flops.epoch_arithmetic(data, config, project, threads, fmt, device),
    }


def mlp_setup(
    device: torch.device, batch: int, steps: int, seed: int = 0
) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The tutorial MLP from `seed` and `steps` random MNIST-shaped batches, on `device`."""
    torch.manual_seed(seed)
    model = build_model("mlp", in_features=784, hidden_size=128, num_classes=10).to(device)
    g = torch.Generator().manual_seed(seed)
    batches = [
        (torch.randn(batch, 1, 28, 28, generator=g), torch.randint(0, 10, (batch,), generator=g))
        for _ in range(steps)
    ]
    return model, [(x.to(device), y.to(device)) for x, y in batches]


def timed_steps(step: Step, batches: list, device: torch.device) -> float:
    """Milliseconds per step over `batches` (the device's queued work included)."""
    sync(device)
    start = time.perf_counter()
    for x, y in batches:
        step(x, y)
    sync(device)
    return 1e3 * (time.perf_counter() - start) / len(batches)


def eager_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Step:
    """Forward, loss, backward and the optimizer's step, run op by op."""

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss

    return step


def graphed_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, first: tuple, warmup: int
) -> Step:
    """The same step captured once as a CUDA graph (after `warmup` eager steps on a side stream,
    as torch's docs require); each call copies the batch into the graph's inputs and replays."""
    static_x, static_y = first[0].clone(), first[1].clone()
    run_eagerly = eager_step(model, optimizer)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            run_eagerly(static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        loss = F.cross_entropy(model(static_x), static_y)
        loss.backward()
        optimizer.step()

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return loss

    return step


def captured_vs_eager(device: torch.device, batch: int, steps: int, warmup: int = 3) -> dict:
    """Eager against CUDA-graphed steps of the MLP from the same weights on the same batches."""
    if device.type != "cuda":
        return {"skipped": f"CUDA graphs need a CUDA device (this run: {device.type})"}
    out: dict[str, Any] = {"batch_size": batch, "steps": steps}
    results = {}
    for name in ("eager", "graphed"):
        model, batches = mlp_setup(device, batch, steps)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
        try:
            if name == "eager":
                step = eager_step(model, optimizer)
                for _ in range(warmup):  # the graphed run's warm-up steps, the same arithmetic
                    step(*batches[0])
            else:
                step = graphed_step(model, optimizer, batches[0], warmup)
            out[f"{name}_ms_per_step"] = timed_steps(step, batches, device)
            results[name] = [p.detach().clone() for p in model.parameters()]
        except Exception as error:  # a benchmark reports a variant that fails, and goes on
            out[f"{name}_error"] = f"{type(error).__name__}: {error}"
    if len(results) == 2:
        diffs = [
            (a - b).abs().max() for a, b in zip(results["eager"], results["graphed"], strict=True)
        ]
        out["max_weight_difference"] = float(torch.stack(diffs).max())
        out["graphed_speedup"] = out["eager_ms_per_step"] / out["graphed_ms_per_step"]
    return out


def compiled_vs_eager(device: torch.device, batch: int, steps: int) -> dict:
    """The project's step (`AutogradStep`) with the net eager, and with it compiled in
    mode "reduce-overhead" (CUDA graphs under torch.compile); the first steps compile."""
    if device.type != "cuda":
        return {"skipped": f"reduce-overhead captures CUDA graphs (this run: {device.type})"}
    out: dict[str, Any] = {"batch_size": batch, "steps": steps}
    for name in ("eager", "reduce_overhead"):
        model, batches = mlp_setup(device, batch, steps)
        net = torch.compile(model, mode="reduce-overhead") if name != "eager" else model
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
        try:
            step = AutogradStep(net, optimizer)
            timed_steps(step, batches[:5], device)  # compile and warm up
            out[f"{name}_ms_per_step"] = timed_steps(step, batches, device)
        except Exception as error:
            out[f"{name}_error"] = f"{type(error).__name__}: {error}"
    if "eager_ms_per_step" in out and "reduce_overhead_ms_per_step" in out:
        out["reduce_overhead_speedup"] = (
            out["eager_ms_per_step"] / out["reduce_overhead_ms_per_step"]
        )
    return out


def flops_note(arch: str, data: ImageData, params_path: str) -> str:
    """The net timed, for the record."""
    config = getattr(load_params(params_path), arch)
    return f"{net_name(config)} {model_args_for(config, data)}"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", default=default, help=f"default here: {default}")
    parser.add_argument("--quick", action="store_true", help="1 %% of the data: a smoke run")
    parser.add_argument("--seeds", type=int, default=32, help="MLP members (together vs not)")
    parser.add_argument("--cnn-seeds", type=int, default=4, help="CNN members")
    parser.add_argument("--tutorial-batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=500, help="captured vs eager steps")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.cnn_seeds, args.tutorial_batches, args.steps = 2, 2, 3, 20
    return args


def main() -> None:
    args = parse()
    scale = 0.01 if args.quick else 1.0
    device = torch.device(args.device)
    out: dict[str, Any] = {"machine": members.machine(args.device), "quick": args.quick}
    for arch in ("mlp", "cnn"):
        data = loops.load_synthetic(loops.DATASET[arch], scale)
        out[f"{arch}_net"] = flops_note(arch, data, args.params)
        out[f"{arch}_epoch"] = epochs(arch, data, args.params, args.device, args.tutorial_batches)
    for arch, n, train in (("mlp", args.seeds, 60_000), ("cnn", args.cnn_seeds, 50_000)):
        train = max(int(train * scale), 64)
        out[f"{arch}_members"] = members.measure(
            arch, [1, n], train=train, device=args.device, reps=1, params=args.params
        )
    out["captured_step"] = captured_vs_eager(device, 64, args.steps)
    out["compiled_step"] = compiled_vs_eager(device, 64, args.steps)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        write_json(args.json, json.loads(text))


if __name__ == "__main__":
    main()
