"""Run by tests/test_distributed.py under torchrun: train both classifiers, rank 0 writes JSON.

python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py out.json
"""

from __future__ import annotations

import dataclasses
import json
import sys

from test_distributed import CONFIGS, make_data

from appliedtorch.classify import distributed
from appliedtorch.classify.batches import NORMALIZATION, Batches, Normalizer
from appliedtorch.classify.loop import evaluate, train_classifier


def main() -> None:
    world = distributed.launch(cuda=False)
    out = {"world_size": world.size}
    for name, (dataset, config) in CONFIGS.items():
        result = train_classifier(make_data(dataset), config, world=world)
        out[name] = {
            "history": [dataclasses.asdict(h) for h in result.history],
            "predictions": result.evaluation.predictions.tolist(),
        }
        if world.is_main:  # the whole test set through rank 0's model, in this process alone
            data = make_data(dataset)
            test = Batches(data.test_images, data.test_labels, config.eval_batch_size,
                           Normalizer(*NORMALIZATION[data.name]))  # fmt: skip
            alone = evaluate(result.model, test)
            out[name]["same_as_rank0_model"] = bool(
                (alone.predictions == result.evaluation.predictions).all()
            )
            out[name]["rank0_model_loss"] = (alone.loss, result.evaluation.loss)
    if world.is_main:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f)


if __name__ == "__main__":
    main()
