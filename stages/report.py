"""DVC stage `report`: one self-contained HTML page with every stage's numbers, pictures and run.

    python stages/report.py --params params.yaml --reports reports --out reports/index.html

Reads reports/<stage>/metrics.json and the PNGs, looks up each stage's MLflow run (the newest
finished one whose params.md5 matches the workspace's params), and writes reports/index.html,
which opens from disk with no server. Logs no MLflow run of its own: it only reads them.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError, TrackingError
from appliedtorch.core.params import run_params
from appliedtorch.core.redact import redact
from appliedtorch.core.utils import check_writable, output_set, write_text
from appliedtorch.data.datasets import dataset
from appliedtorch.params import load_params
from appliedtorch.report import page as report
from appliedtorch.tracking.lineage import lineage_tags, params_md5
from appliedtorch.tracking.run import latest_runs
from appliedtorch.tracking.uri import repo_root, resolve_tracking_uri

log = logging.getLogger("report")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    parser.add_argument("--out", type=Path, default=Path("reports/index.html"))
    parser.add_argument(
        "--ui",
        default=None,
        help="MLflow UI address for run links (default: the tracking server, "
        "or http://127.0.0.1:5000 where `mlflow ui` listens)",
    )
    args = parser.parse_args()

    p = load_params(args.params)
    check_writable(args.out.parent)  # before any work: not a traceback after building the page
    if args.out.is_dir():
        raise AppliedTorchError(f"cannot write {args.out}: a directory; pass a file path to --out")
    uri = resolve_tracking_uri(p.tracking.uri)
    datasets = {arch: getattr(p, arch).dataset for arch in ("mlp", "cnn")}
    sections = report.sections_for({a: (d, dataset(d).title) for a, d in datasets.items()})
    # Prefer the run made with the workspace's params: after a queued sweep the newest run
    # belongs to some experiment, not necessarily to the results in reports/.
    prefer = {
        s.experiment: {"params.md5": params_md5(run_params(p, s.params_section))} for s in sections
    }
    runs, problem = {}, None
    try:
        runs = latest_runs([s.experiment for s in sections], uri, prefer)
    except TrackingError as exc:  # the page is still useful without run ids
        problem = str(exc)
        log.warning("%s", problem)
    git = lineage_tags("report", repo_root())
    ui = args.ui or (uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
    page = report.build_report(
        args.reports,
        runs,
        commit=git.get("git.commit"),
        dirty=git.get("git.dirty") == "true",
        tracking_uri=redact(uri),  # a postgresql password stays off the page
        ui_base=ui,
        runs_problem=problem,
        sections=sections,
        params={s.params_section: run_params(p, s.params_section) for s in sections},
    )
    with output_set(args.out.parent) as out:
        write_text(out.path(args.out), page)
    log.info("wrote %s (%d KiB, %d MLflow runs)", args.out, len(page) // 1024, len(runs))


if __name__ == "__main__":
    run_stage(main)
