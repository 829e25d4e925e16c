"""DVC stage `pinn_family`: one net u(x; k) for u'' + k·u = 0 over a range of k.

    python stages/pinn_family.py --params params.yaml --model models/pinn_family.pt \
        --reports reports/pinn_family

Trains the family net (pinn/family.py) on a grid of x and k in [pinn_family.k_min, k_max],
checks it against sin(√k·x)/sin(√k·π/2) at `eval_k_points` values of k it was not trained on,
`eval_x_points` values of x each, and writes models/pinn_family.pt (checked by reloading it) and
reports/pinn_family/ (metrics.json, error_by_k.csv, error_by_k.png, solutions.png, loss.png).
Logs one MLflow run in `pinn-family`. Evaluate the model at your k:
`python -m appliedtorch.pinn.family_cli --k 2.5`.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import check_writable, output_set, seed_everything
from appliedtorch.params import load_params
from appliedtorch.pinn import family, family_outputs
from appliedtorch.tracking.run import stage_run

log = logging.getLogger("pinn_family")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, default=Path("models/pinn_family.pt"))
    parser.add_argument("--reports", type=Path, default=Path("reports/pinn_family"))
    args = parser.parse_args()

    p = load_params(args.params)
    cfg = p.pinn_family
    check_writable(args.model.parent, args.reports)
    seed_everything(p.seed)
    params = run_params(p, "pinn_family")
    with stage_run(
        "pinn-family",
        "pinn_family",
        params,
        p.tracking.uri,
        {"device.resolved": "cpu"},
        system_metrics=p.tracking.system_metrics,
    ) as run:
        result = family.train(cfg)
        with output_set(args.model.parent, args.reports) as out:
            family.save(result.net, out.path(args.model))
            reloaded = family.load(out.path(args.model))
            if any(
                (a != b).any()
                for a, b in zip(reloaded.parameters(), result.net.parameters(), strict=True)
            ):
                raise AppliedTorchError(f"{args.model}: reloaded weights differ; disk full?")
            metrics, staged = family_outputs.write_reports(result, cfg, out.path(args.reports))
            log.info(
                "max error %.3e over %d unseen k x %d x (worst at k = %.4f), %.2f s",
                metrics["max_abs_error"],
                metrics["eval_k_points"],
                metrics["eval_x_points"],
                metrics["worst_k"],
                metrics["seconds"],
            )
            stride = max(1, len(result.loss) // 100)
            for step in range(0, len(result.loss), stride):
                run.log_metrics({"loss": result.loss[step]}, step=step)
            run.log_metrics(metrics)
            run.log_artifacts(staged)


if __name__ == "__main__":
    run_stage(main)
