"""One evaluation pass over the test set: the tutorial's DataLoader loop against the project's.

    python benchmarks/evaluation.py --reps 3           # MLP and CNN, full-size synthetic data

The tutorial's test loop (per-sample PIL transforms through a DataLoader, `torch.no_grad`,
batches of the training batch size, `.item()` per batch) against
`appliedtorch.classify.training.loop.evaluate` as the training loop calls it, on the same
(untrained) weights; the median of `--reps`. Writes reports/benchmarks/evaluation.json.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision import transforms

import loops
from appliedtorch.classify.nets.models import build_model
from appliedtorch.classify.params import ClassifierParams
from appliedtorch.classify.training.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.training.loop import evaluate, model_args_for, net_name
from appliedtorch.core.utils import thread_count
from appliedtorch.data.loading import ImageData
from appliedtorch.params import load_params
from common import REPO, Row, fmt_s, machine, print_machine, print_table, save


def tutorial_evaluation(model: torch.nn.Module, data: ImageData, batch_size: int) -> float:
    """The tutorial's test loop (DataLoader of PIL transforms, no_grad, .item() per batch); seconds."""
    mean, std = NORMALIZATION[data.name]
    dataset = loops.TutorialDataset(
        data.test_images.numpy(),
        data.test_labels.numpy(),
        transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]),
    )
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    correct = total = 0
    start = time.perf_counter()
    with torch.no_grad():
        for images, labels in loader:
            outputs = model(images)
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return time.perf_counter() - start


def project_evaluation(model: torch.nn.Module, data: ImageData, config: ClassifierParams) -> float:
    """`appliedtorch.classify.training.loop.evaluate` as the training loop calls it; seconds."""
    mean, std = NORMALIZATION[data.name]
    normalizer = Normalizer(mean, std, "cpu", config.channels_last)
    test = Batches(data.test_images, data.test_labels, config.eval_batch_size, normalizer)
    with thread_count(config.threads):
        return evaluate(model, test).seconds


def measure(data: ImageData, config: ClassifierParams, reps: int, seed: int) -> dict[str, Any]:
    """Tutorial vs project evaluation pass over the test set, same (untrained) weights."""
    torch.manual_seed(seed)
    tutorial_model = build_model(net_name(config), **model_args_for(config, data))
    project_model = build_model(net_name(config), **model_args_for(config, data))
    project_model.load_state_dict(tutorial_model.state_dict())
    if config.channels_last:
        project_model = project_model.to(memory_format=torch.channels_last)
    tutorial_runs, project_runs = [], []
    for _ in range(reps):
        tutorial_runs.append(tutorial_evaluation(tutorial_model, data, config.batch_size))
        project_runs.append(project_evaluation(project_model, data, config))
    tutorial, project = statistics.median(tutorial_runs), statistics.median(project_runs)
    return {
        "test_samples": len(data.test_images),
        "tutorial_batch_size": config.batch_size,
        "project_batch_size": config.eval_batch_size,
        "tutorial_seconds": tutorial,
        "tutorial_runs": tutorial_runs,
        "project_seconds": project,
        "project_runs": project_runs,
        "ratio": tutorial / project,
    }


def rows(section: str, r: dict[str, Any]) -> list[Row]:
    """One row: the two passes' median seconds and their ratio."""
    label = f"{section.upper()} evaluation ({r['test_samples']} images)"
    tutorial, project = fmt_s(r["tutorial_seconds"]), fmt_s(r["project_seconds"])
    return [(label, tutorial, project, f"{r['ratio']:.1f}x", "", "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full data")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/evaluation.json")
    args = parser.parse_args()
    p = load_params(args.params)
    report = {"machine": machine(), "results": {}, "table": []}
    print_machine(report["machine"])
    for section in ("mlp", "cnn"):
        data = loops.load_synthetic(loops.DATASET[section], args.scale)
        result = measure(data, loops.timed_section(p, section), args.reps, p.seed)
        report["results"][f"{section}_eval"] = result
        report["table"] += rows(section, result)
    print_table(report["table"])
    save("evaluation", report, args.json)


if __name__ == "__main__":
    main()
