"""PINN accuracy and time over several seeds: params.yaml's recipe against the tutorial's.

    python benchmarks/pinn_seeds.py                  # 5 seeds of params.yaml's pinn, tutorial once
    python benchmarks/pinn_seeds.py --seeds 10 --no-tutorial --json reports/pinn_seeds.json

Each run seeds everything, calls `appliedtorch.pinn.solve` and checks the net against sin x on
`eval_points` points; seconds are the solve alone (no tracking, no plots). The tutorial's recipe
is PINNParams' defaults (soft BC, float32, fixed 100-point grid, 10,000 Adam steps at lr 0.01)
on torch's default thread count, as the tutorial runs it. The load average is printed because
timings on a shared machine mean little without it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from appliedtorch.core.utils import seed_everything
from appliedtorch.params import load_params
from appliedtorch.pinn import outputs, solver
from appliedtorch.pinn.params import PINNParams


def run_once(cfg: PINNParams, seed: int) -> dict[str, float]:
    """Solve once from `seed`; return errors, total and per-phase seconds."""
    seed_everything(seed)
    result = solver.solve(cfg)
    out = {"seed": seed, **outputs.evaluate(result.net, cfg.eval_points)}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-tutorial", action="store_true", help="skip the tutorial's recipe")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    cfg = load_params(args.params).pinn
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPU(s)")
    print(f"params.yaml pinn: {cfg.model_dump()}")
    rows = []
    for seed in range(args.seeds):
        rows.append(run_once(cfg, seed))
        show(f"seed {seed}", rows[-1])
    median = {
        "max_abs_error": statistics.median(r["max_abs_error"] for r in rows),
        "l2_relative_error": statistics.median(r["l2_relative_error"] for r in rows),
        "total_seconds": statistics.median(r["total_seconds"] for r in rows),
    }
    show("median", median)
    print(f"worst max err {max(r['max_abs_error'] for r in rows):.2e}")

    tutorial = None
    if not args.no_tutorial:
        tutorial = run_once(PINNParams(num_threads=0), 0)
        show("tutorial", tutorial)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"runs": rows, "median": median, "tutorial": tutorial}, indent=2) + "\n"
        )


if __name__ == "__main__":
    sys.exit(main())
