"""DVC stage `pinn_observations`: noisy observations of u(x; k_true) for the inverse problem.

    python stages/pinn_observations.py --params params.yaml --out data/pinn/observations.csv

Writes a CSV of x,u: `pinn_inverse.points` evenly spaced interior points of [0, π/2] and
sin(√k·x)/sin(√k·π/2) at k = `pinn_inverse.k_true`, plus Gaussian noise of sd `noise_sd` drawn
with `noise_seed`. No MLflow run: the inverse stage logs what it read (with the file's md5).
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.utils import check_writable, output_set
from appliedtorch.params import load_params
from appliedtorch.pinn import observations

log = logging.getLogger("pinn_observations")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("data/pinn/observations.csv"))
    args = parser.parse_args()

    cfg = load_params(args.params).pinn_inverse
    check_writable(args.out.parent)
    x, u = observations.make(cfg.k_true, cfg.points, cfg.noise_sd, cfg.noise_seed)
    with output_set(args.out.parent) as out:
        observations.write_csv(out.path(args.out), x, u)
    log.info(
        "wrote %s: %d points, k_true %g, noise sd %g",
        args.out,
        cfg.points,
        cfg.k_true,
        cfg.noise_sd,
    )


if __name__ == "__main__":
    run_stage(main)
