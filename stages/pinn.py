"""DVC stage `pinn`: physics-informed net for u'' + u = 0 on [0, π/2], u(0)=0, u(π/2)=1 (sin x).

    python stages/pinn.py --params params.yaml --model models/pinn.pt --reports reports/pinn

Writes models/pinn.pt (state dict + config, checked by reloading it) and reports/pinn/
(metrics.json, solution.csv, solution.png, error.png, loss.png); logs one MLflow run in `pinn-ode`.
scipy.integrate.solve_bvp solves the same problem beside it (`pinn.bvp_tolerance`): its error,
nodes and time, and the PINN's over them, go to metrics.json as `bvp_*` and `*_ratio_*`.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import check_writable, output_set, seed_everything
from appliedtorch.params import load_params
from appliedtorch.pinn import classical, outputs, solver
from appliedtorch.pinn.budget import check_budget
from appliedtorch.tracking.run import stage_run

log = logging.getLogger("pinn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, default=Path("models/pinn.pt"))
    parser.add_argument("--reports", type=Path, default=Path("reports/pinn"))
    args = parser.parse_args()

    p = load_params(args.params)
    check_budget(p)  # a device it lacks, or more memory than it has: one line, no work
    check_writable(args.model.parent, args.reports)  # before any work, not after solving
    seed_everything(p.seed)
    tags = {"device.resolved": "cpu"}  # a 141-weight net is latency-bound: the CPU beats a GPU
    params, uri = run_params(p, "pinn"), p.tracking.uri
    with stage_run(
        "pinn-ode", "pinn", params, uri, tags, system_metrics=p.tracking.system_metrics
    ) as run:
        result = solver.solve(p.pinn)
        bvp = classical.solve_bvp_baseline(p.pinn.bvp_tolerance, p.pinn.eval_points)
        # One set: the model and every report file appear together, or none of them changes.
        with output_set(args.model.parent, args.reports) as out:
            outputs.save_verified(result.net, out.path(args.model), p.pinn.eval_points)
            metrics, staged = outputs.write_reports(
                result,
                out.path(args.reports),
                p.pinn.eval_points,
                beside=lambda pinn: classical.comparison(pinn, bvp),
            )
            log.info(
                "max |u - sin x| = %.3e, relative L2 %.3e, %.2f s; solve_bvp (tol %g): %.3e "
                "with %d nodes, %.3f s",
                metrics["max_abs_error"],
                metrics["l2_relative_error"],
                metrics["seconds"],
                p.pinn.bvp_tolerance,
                bvp.max_abs_error,
                bvp.nodes,
                bvp.seconds,
            )
            for step, loss in outputs.loss_log_points(result):
                run.log_metrics({"loss": loss}, step=step)
            run.log_metrics(metrics)
            run.set_tags(
                {"pinn.phases": " ".join(f"{k}:{a}-{b}" for k, (a, b) in result.phases.items())}
            )
            run.log_artifacts(staged)  # same file names as in reports/pinn
            run.log_model(result.net, "model", input_example=outputs.input_example(result.net))


if __name__ == "__main__":
    run_stage(main)
