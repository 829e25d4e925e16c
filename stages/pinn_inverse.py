"""DVC stage `pinn_inverse`: k in u'' + k·u = 0 from observations, beside least squares.

    python stages/pinn_inverse.py --params params.yaml \
        --observations data/pinn/observations.csv --reports reports/pinn_inverse

`--observations` may name any CSV of x,u (header `x,u`, x in [0, π/2]); it is validated before
any training. Trains the net and k together (pinn/inverse.py), estimates k by least squares on
the closed form from the same data, and writes reports/pinn_inverse/ (metrics.json: k̂, its
standard error, the least-squares k̂ and the difference; fit.csv, k_trace.csv, fit.png,
residual.png, k_trace.png). Logs one MLflow run in `pinn-inverse`, k̂ per step as `k_hat`.
`k_error` compares with `pinn_inverse.k_true`: for your own data, set it or ignore it.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import (
    check_writable,
    file_md5,
    output_set,
    seed_everything,
)
from appliedtorch.params import load_params
from appliedtorch.pinn import inverse, inverse_outputs, observations
from appliedtorch.tracking.run import stage_run

log = logging.getLogger("pinn_inverse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--observations", type=Path, default=Path("data/pinn/observations.csv"))
    parser.add_argument("--reports", type=Path, default=Path("reports/pinn_inverse"))
    args = parser.parse_args()

    p = load_params(args.params)
    cfg = p.pinn_inverse
    x, u = observations.read_csv(args.observations)  # untrusted: refused in one line
    check_writable(args.reports)
    seed_everything(p.seed)
    tags = {"device.resolved": "cpu", "observations.md5": file_md5(args.observations)}
    params = run_params(p, "pinn_inverse")
    with stage_run(
        "pinn-inverse",
        "pinn_inverse",
        params,
        p.tracking.uri,
        tags,
        system_metrics=p.tracking.system_metrics,
    ) as run:
        result = inverse.fit(cfg, x, u)
        ls = inverse.least_squares_k(x, u, cfg.k_init)
        with output_set(args.reports) as out:
            metrics, staged = inverse_outputs.write_reports(
                result, ls, (x, u), cfg.k_true, out.path(args.reports)
            )
            log.info(
                "k̂ = %.9f ± %.2e (least squares %.9f; difference %.2e), %.2f s",
                result.k,
                result.k_standard_error,
                ls.k,
                metrics["k_difference"],
                metrics["seconds"],
            )
            # k_hat is the curve over training; its last point is the final k̂
            for step, k in inverse.trace_points(result.k_trace):
                run.log_metrics({"k_hat": k}, step=step)
            run.log_metrics({name: v for name, v in metrics.items() if name != "k_hat"})
            run.log_artifacts(staged)


if __name__ == "__main__":
    run_stage(main)
