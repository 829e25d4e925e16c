"""Run by tests/test_distributed.py under torchrun: train each job, rank 0 writes JSON.

python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py jobs.pt out.json

jobs.pt is `{name: (ImageData, config)}`, saved by the test with `torch.save`: the test owns the
configurations it compares against one process, and this worker imports no test module.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import torch

from appliedtorch.classify.runs import distributed
from appliedtorch.classify.training.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.training.loop import evaluate, train_classifier


def main() -> None:
    jobs_path, out_path = sys.argv[1:3]
    jobs = torch.load(jobs_path, weights_only=False)  # written by the test that started us
    world = distributed.launch(cuda=False)
    out = {"world_size": world.size}
    for name, (data, config) in jobs.items():
        result = train_classifier(data, config, world=world)
        out[name] = {
            "history": [dataclasses.asdict(h) for h in result.history],
            "predictions": result.evaluation.predictions.tolist(),
        }
        if world.is_main:  # the whole test set through rank 0's model, in this process alone
            normalizer = Normalizer(*NORMALIZATION[data.name])
            test = Batches(data.test_images, data.test_labels, config.eval_batch_size, normalizer)
            alone = evaluate(result.model, test)
            out[name]["same_as_rank0_model"] = bool(
                (alone.predictions == result.evaluation.predictions).all()
            )
            out[name]["rank0_model_loss"] = (alone.loss, result.evaluation.loss)
    if world.is_main:
        with open(out_path, "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
