"""Evaluate the trained family net u(x; k) at a k of your choice.

    python -m appliedtorch.pinn.family_cli --k 2.5                 # "x u" lines, 11 points
    python -m appliedtorch.pinn.family_cli --k 2.5 --x 0.1 0.7     # at these x
    python -m appliedtorch.pinn.family_cli --k 2.5 --points 101 --csv u.csv

Reads models/pinn_family.pt (`--model`; `dvc repro pinn_family` writes it), checked on load.
k must lie in the range the net was trained on, x in [0, π/2]. Each line also gives the closed
form sin(√k·x)/sin(√k·π/2) and the difference (`--no-exact` leaves them out). Importing this
module loads no torch: `main` settles the OpenMP wait first, as every entry point does.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

MAX_X = 1_000_000  # points one call evaluates (--x or --points)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m appliedtorch.pinn.family_cli", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--k", type=float, required=True, help="the coefficient k")
    parser.add_argument("--model", type=Path, default=Path("models/pinn_family.pt"))
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--x", type=float, nargs="+", help="points x in [0, π/2]")
    where.add_argument("--points", type=int, default=11, help="evenly spaced x (default 11)")
    parser.add_argument("--csv", type=Path, help="write x,u,exact,error to this CSV file")
    parser.add_argument("--no-exact", action="store_true", help="leave out the closed form")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Print u at the points (or write the CSV); one `error:` line on bad input."""
    from appliedtorch.core import openmp

    openmp.settle()  # before torch loads
    from appliedtorch.core.cli import run_stage

    args = parse_args(argv)
    run_stage(lambda: _evaluate(args), "appliedtorch.pinn.family_cli")


def _evaluate(args: argparse.Namespace) -> None:
    import numpy as np

    from appliedtorch.core.errors import AppliedTorchError
    from appliedtorch.core.utils import write_text
    from appliedtorch.pinn import family
    from appliedtorch.pinn.problem import A, B, closed_form

    if not math.isfinite(args.k):
        raise AppliedTorchError(f"--k must be a finite number (got {args.k})")
    if args.x is None and not 2 <= args.points <= MAX_X:
        raise AppliedTorchError(f"--points must be 2 to {MAX_X} (got {args.points})")
    if args.x is not None and len(args.x) > MAX_X:
        raise AppliedTorchError(f"--x takes at most {MAX_X} points")
    x = np.array(args.x) if args.x is not None else np.linspace(A, B, args.points)
    if not np.all(np.isfinite(x)):
        raise AppliedTorchError("--x must be finite numbers")
    net = family.load(args.model)
    u = family.evaluate_at(net, args.k, x)
    columns = {"x": x, "u": u}
    if not args.no_exact:
        exact = closed_form(x, args.k)
        columns |= {"exact": exact, "error": u - exact}
    if args.csv:
        lines = [",".join(columns)]
        lines += [
            ",".join(repr(float(v)) for v in row) for row in zip(*columns.values(), strict=True)
        ]
        write_text(args.csv, "\n".join(lines) + "\n")
        print(f"wrote {args.csv} ({len(x)} points, k = {args.k:g})", file=sys.stderr)
        return
    print(" ".join(f"{c:>22}" for c in columns))
    for row in zip(*columns.values(), strict=True):
        print(" ".join(f"{float(v):22.15e}" for v in row))


if __name__ == "__main__":
    main()
