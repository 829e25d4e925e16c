"""The PINN against scipy.integrate.solve_bvp on u'' + u = 0: error, nodes or weights, seconds.

    python benchmarks/pinn_bvp.py                        # tolerances 1e-6, 1e-8, 1e-10
    python benchmarks/pinn_bvp.py --tolerances 1e-4 1e-12 --no-pinn

solve_bvp is timed warm, best of `--repeat` calls; the PINN is params.yaml's `pinn` recipe, solved
once from `seed` (no tracking, no plots). Both are checked against sin x on `eval_points` points.
The load average is printed because timings on a shared machine mean little without it.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import os
from pathlib import Path

from appliedtorch.core.utils import seed_everything
from appliedtorch.params import load_params
from appliedtorch.pinn import classical, outputs, solver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-6, 1e-8, 1e-10])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-pinn", action="store_true", help="solve_bvp only")
    args = parser.parse_args()

    p = load_params(args.params)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    print(f"{'solver':>22}  {'max error':>9}  {'size':>12}  {'seconds':>8}")
    for tol in args.tolerances:
        runs = [classical.solve_bvp_baseline(tol, p.pinn.eval_points) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r.seconds)
        print(
            f"{f'solve_bvp tol {tol:g}':>22}  {best.max_abs_error:9.2e}  "
            f"{f'{best.nodes} nodes':>12}  {best.seconds:8.4f}",
            flush=True,
        )
    if not args.no_pinn:
        seed_everything(p.seed)
        result = solver.solve(p.pinn)
        error = outputs.evaluate(result.net, p.pinn.eval_points)["max_abs_error"]
        weights = sum(t.numel() for t in result.net.parameters())
        print(
            f"{'PINN (params.yaml)':>22}  {error:9.2e}  {f'{weights} weights':>12}  "
            f"{result.seconds['total']:8.4f}"
        )


if __name__ == "__main__":
    main()
