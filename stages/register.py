"""DVC stage `register`: the trained classifiers become versions in MLflow's model registry.

    python stages/register.py --params params.yaml \
        --classifier mlp reports/mlp/metrics.json models/mlp.pt \
        --classifier cnn reports/cnn/metrics.json models/cnn.pt

Runs after the training stages' outputs have landed, and trains nothing: each classifier's
training run (the one that logged exactly this metrics.json, with the workspace's params) has its
model registered under its experiment's name (`mlp.experiment`: mnist-mlp, or fashion-mnist-mlp
with `mlp.dataset: fashion-mnist`), and alias `champion` moves by the project's rule
(`tracking.registry.should_promote`). Registering the same run again changes nothing. With
`tracking.register_models: false` it does nothing.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import json
import logging
import math
from pathlib import Path

from appliedtorch.classify.nets.models import check_finite, read_model_file
from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import read_regular
from appliedtorch.params import load_params
from appliedtorch.tracking.lineage import params_md5
from appliedtorch.tracking.registry import register_trained

log = logging.getLogger("register")
SECTIONS = ("mlp", "cnn")  # params sections of the classifiers (their runs' params.md5)


def read_test_accuracy(metrics: Path) -> float:
    """metrics.json's `test_accuracy`; one line naming the file when it is unusable."""
    try:
        value = json.loads(read_regular(metrics, 1 << 20).decode("utf-8")).get("test_accuracy")
    except (OSError, ValueError, AttributeError, RecursionError) as exc:
        raise AppliedTorchError(f"{metrics}: not a readable metrics file ({exc})") from None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise AppliedTorchError(f"{metrics}: test_accuracy is not a number (got {value!r:.40})")
    return float(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--classifier",
        nargs=3,
        action="append",
        default=[],
        metavar=("SECTION", "METRICS", "MODEL"),
        help="a classifier's params section (mlp|cnn), the metrics.json and model file its stage wrote",
    )
    args = parser.parse_args()

    p = load_params(args.params)
    if not p.tracking.register_models:
        log.info("tracking.register_models is false: no model registered")
        return
    checked = []  # every file read before anything registers
    for section, metrics, model in args.classifier:
        if section not in SECTIONS:
            raise AppliedTorchError(f"--classifier: unknown section '{section}' (mlp or cnn)")
        accuracy = read_test_accuracy(Path(metrics))
        check_finite(read_model_file(model)["state_dict"], model)
        checked.append((section, Path(metrics), accuracy))
    for section, metrics, accuracy in checked:
        name = getattr(p, section).experiment  # the training stage's experiment and model name
        md5 = params_md5(run_params(p, section))
        done = register_trained(name, md5, metrics, accuracy, p.tracking.uri)
        log.info(
            "%s: run %s is version %s%s",
            name,
            done["run_id"],
            done["registry.version"],
            "" if done["registry.new"] else " (already registered)",
        )


if __name__ == "__main__":
    run_stage(main)
