"""DVC stage `math_demos`: run the tutorial's math demos and check each against its analytic answer.

    python stages/math_demos.py --params params.yaml --reports reports/math

Writes reports/math/metrics.json (`max_error`, its correct digits, `failed_demos`), demos.json
(each `<demo>.error` and the demos' values), gradient_descent.png and fft_spectrum.png, and logs
one MLflow run in experiment `math-demos`.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import check_writable, output_set, seed_everything, write_json
from appliedtorch.demos import checks as demos
from appliedtorch.demos import figures as plots
from appliedtorch.demos.budget import check_budget
from appliedtorch.params import load_params
from appliedtorch.plots import save_figure
from appliedtorch.tracking.run import stage_run

log = logging.getLogger("math_demos")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--reports", type=Path, default=Path("reports/math"))
    args = parser.parse_args()

    p = load_params(args.params)
    check_budget(p)  # a device it lacks, or more memory than it has: one line, no work
    check_writable(args.reports)  # before any work and before an MLflow run is started
    seed_everything(p.seed)
    with stage_run("math-demos", "math_demos", run_params(p, "math"), p.tracking.uri) as run:
        results = demos.run_all(p.math, device=p.device)
        by_name = {r.name: r for r in results}
        metrics = demos.summary_metrics(results)
        log.info("demos checked against their analytic answers:\n%s", demos.format_table(results))
        if metrics["failed_demos"]:
            log.warning("%d demo(s) missed their tolerance", metrics["failed_demos"])

        gd, fft = by_name["gd"], by_name["fft"]
        fig_gd = plots.gradient_descent_figure(gd.details["path"], demos.quartic, demos.GD_X_STAR)
        peaks = list(zip(fft.computed["peak_hz"], fft.computed["amplitude"], strict=True))
        fig_fft = plots.fft_spectrum_figure(fft.details["freqs"], fft.details["amplitude"], peaks)
        names = ["gradient_descent.png", "fft_spectrum.png", "demos.json", "metrics.json"]
        # One set: the pictures and metrics.json appear together, or none of them changes.
        with output_set(args.reports) as out:
            staged = [out.path(args.reports / name) for name in names]
            save_figure(fig_gd, staged[0])
            save_figure(fig_fft, staged[1])
            headline, details = demos.split_metrics(metrics)
            write_json(staged[2], details)
            write_json(staged[3], headline)  # last: it marks a complete run

            run.log_metrics(metrics)
            tags = {"device.resolved": by_name["device"].details["device"]}
            if gd.details["warnings"]:
                tags["gd.warning"] = " ".join(gd.details["warnings"])
            run.set_tags(tags)
            run.log_artifacts(staged)  # same file names as in reports/math


if __name__ == "__main__":
    run_stage(main)
