"""The inverse PINN against least squares over noise seeds: RMSE of k, and its speed.

    python benchmarks/pinn_inverse.py                    # 20 noise seeds of params.yaml's recipe
    python benchmarks/pinn_inverse.py --seeds 40 --k-true 2.3 --json reports/pinn_inverse_bench.json

For each noise seed, observations from params.yaml's `pinn_inverse` (k_true, points, noise_sd)
are fitted by the PINN (net and k together) and by scipy's least squares on the closed form; the
RMSE of k over seeds for both and their ratio (target: PINN / least squares <= 1.1) are printed,
with the largest |k̂_PINN - k̂_LS|. First, one noise-free fit: |k̂ - k_true| and its wall and
CPU seconds (target: <= 1e-6 in <= 10 s). The load average is printed because timings on a
shared machine mean little without it.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import json
import math
import os
import time
from pathlib import Path

from appliedtorch.core.utils import seed_everything
from appliedtorch.params import load_params
from appliedtorch.pinn import inverse, observations


def fit_once(cfg, noise_sd: float, noise_seed: int, seed: int) -> dict[str, float]:  # noqa: ANN001
    """One PINN fit and one least-squares fit on the same observations."""
    x, u = observations.make(cfg.k_true, cfg.points, noise_sd, noise_seed)
    seed_everything(seed)
    wall, cpu = time.perf_counter(), time.process_time()
    result = inverse.fit(cfg, x, u)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    ls = inverse.least_squares_k(x, u, cfg.k_init)
    return {
        "noise_seed": noise_seed,
        "k_pinn": result.k,
        "k_lstsq": ls.k,
        "difference": abs(result.k - ls.k),
        "wall_seconds": wall,
        "cpu_seconds": cpu,
    }


def rmse(values: list[float], truth: float) -> float:
    """Root-mean-square error of the estimates."""
    return math.sqrt(sum((v - truth) ** 2 for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=20, help="noise seeds (default 20)")
    parser.add_argument("--k-true", type=float, help="instead of pinn_inverse.k_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1 (got {args.seeds})")

    p = load_params(args.params)
    cfg = p.pinn_inverse
    if args.k_true is not None:
        cfg = cfg.model_copy(update={"k_true": args.k_true})
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    exact = fit_once(cfg, 0.0, 0, p.seed)
    print(
        f"noise-free: |k̂ - k_true| = {abs(exact['k_pinn'] - cfg.k_true):.2e} in "
        f"{exact['wall_seconds']:.2f} s wall, {exact['cpu_seconds']:.2f} s CPU",
        flush=True,
    )
    rows = []
    for s in range(args.seeds):
        rows.append(fit_once(cfg, cfg.noise_sd, s, p.seed))
        r = rows[-1]
        print(
            f"noise seed {s:3d}: k̂ PINN {r['k_pinn']:.9f}  least squares {r['k_lstsq']:.9f}"
            f"  difference {r['difference']:.1e}  {r['wall_seconds']:.2f} s",
            flush=True,
        )
    pinn = rmse([r["k_pinn"] for r in rows], cfg.k_true)
    ls = rmse([r["k_lstsq"] for r in rows], cfg.k_true)
    summary = {
        "k_true": cfg.k_true,
        "points": cfg.points,
        "noise_sd": cfg.noise_sd,
        "seeds": args.seeds,
        "rmse_pinn": pinn,
        "rmse_lstsq": ls,
        "rmse_ratio": pinn / ls,
        "max_difference": max(r["difference"] for r in rows),
        "noise_free_error": abs(exact["k_pinn"] - cfg.k_true),
        "noise_free_wall_seconds": exact["wall_seconds"],
        "noise_free_cpu_seconds": exact["cpu_seconds"],
    }
    print(
        f"RMSE of k over {args.seeds} seeds: PINN {pinn:.3e}, least squares {ls:.3e}, "
        f"ratio {pinn / ls:.4f}; largest |k̂ PINN - k̂ LS| {summary['max_difference']:.1e}"
    )
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": [exact, *rows]}, indent=2))


if __name__ == "__main__":
    main()
