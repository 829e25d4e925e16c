"""PINN accuracy and time over several seeds: params.yaml's recipe against the tutorial's.

    python benchmarks/pinn_seeds.py                  # 5 seeds of params.yaml's pinn, tutorial once
    python benchmarks/pinn_seeds.py --seeds 10 --no-tutorial --json /tmp/pinn_seeds.json

Each run seeds everything, calls `appliedtorch.pinn.solve` and checks the net against sin x on
`eval_points` points; seconds are the solve alone (no tracking, no plots). The tutorial's recipe
is PINNParams' defaults (soft BC, float32, fixed 100-point grid, 10,000 Adam steps at lr 0.01)
on torch's default thread count, as the tutorial runs it. The load average is printed because
timings on a shared machine mean little without it. Writes reports/benchmarks/pinn_seeds.json.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

from appliedtorch.core.utils import seed_everything
from appliedtorch.params import load_params
from appliedtorch.pinn import outputs, solver
from appliedtorch.pinn.params import PINNParams
from common import Row, fmt_s, machine, save, verdict

TARGETS = {"max_error": 1e-7, "seconds": 10.0}  # params.yaml's recipe, median over the seeds


def run_once(config: PINNParams, seed: int) -> dict[str, float]:
    """Solve once from `seed`; return errors, total and per-phase seconds."""
    seed_everything(seed)
    result = solver.solve(config)
    out = {"seed": seed, **outputs.evaluate(result.net, config.eval_points)}
    out.update({f"{k}_seconds": v for k, v in result.seconds.items()})
    out["lbfgs_restarts"] = result.lbfgs_restarts
    return out


def show(label: str, row: dict[str, float]) -> None:
    phases = " ".join(
        f"{k.removesuffix('_seconds')} {v:.2f}"
        for k, v in row.items()
        if k.endswith("_seconds") and k != "total_seconds"
    )
    print(
        f"{label:>10}  max err {row['max_abs_error']:.2e}  rel L2 {row['l2_relative_error']:.2e}"
        f"  {row['total_seconds']:6.2f} s" + (f"  ({phases})" if phases else ""),
        flush=True,
    )


def measure(config: PINNParams, seeds: int, tutorial: bool = True) -> dict[str, Any]:
    """`config` over `seeds` seeds (each printed as it ends), the tutorial's recipe once."""
    runs = []
    for seed in range(seeds):
        runs.append(run_once(config, seed))
        show(f"seed {seed}", runs[-1])
    median = {
        key: statistics.median(r[key] for r in runs)
        for key in ("max_abs_error", "l2_relative_error", "total_seconds")
    }
    show("median", median)
    print(f"worst max err {max(r['max_abs_error'] for r in runs):.2e}")
    result = {
        "seeds": seeds,
        "runs": runs,
        "median": median,
        "max_error_median": median["max_abs_error"],
        "max_error_worst": max(r["max_abs_error"] for r in runs),
        "seconds_median": median["total_seconds"],
        "tutorial": None,
    }
    if tutorial:
        result["tutorial"] = run_once(PINNParams(num_threads=0), 0)
        show("tutorial", result["tutorial"])
    return result


def rows(r: dict[str, Any]) -> list[Row]:
    """Max error and seconds, params.yaml's recipe (median) against the tutorial's."""
    tut, err, seconds = r["tutorial"], r["max_error_median"], r["seconds_median"]
    return [
        (
            f"PINN max error (median of {r['seeds']} seeds)",
            f"{tut['max_abs_error']:.1e}",
            f"{err:.1e}",
            f"{tut['max_abs_error'] / err:.0f}x",
            f"<= {TARGETS['max_error']:g}",
            verdict(err <= TARGETS["max_error"]),
        ),
        (
            "PINN seconds (median)",
            fmt_s(tut["total_seconds"]),
            fmt_s(seconds),
            f"{tut['total_seconds'] / seconds:.1f}x",
            f"<= {TARGETS['seconds']:g} s",
            verdict(seconds <= TARGETS["seconds"]),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-tutorial", action="store_true", help="skip the tutorial's recipe")
    parser.add_argument("--json", type=Path, help="default reports/benchmarks/pinn_seeds.json")
    args = parser.parse_args()
    config = load_params(args.params).pinn
    report: dict[str, Any] = {"machine": machine()}
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    print(f"params.yaml pinn: {config.model_dump()}")
    result = measure(config, args.seeds, tutorial=not args.no_tutorial)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    report.update(results={"pinn": result}, table=rows(result) if result["tutorial"] else None)
    save("pinn_seeds", report, args.json)


if __name__ == "__main__":
    main()
