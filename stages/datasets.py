"""DVC stages `datasets` and `data@<section>`: which dataset each classifier trains on, as files.

    python stages/datasets.py --params params.yaml --used data/used
    python stages/datasets.py --params params.yaml --section mlp --out data/picked/mlp.json

`--used` writes data/used/<dataset> ("used" or "unused") for every known dataset, from
`mlp.dataset` and `cnn.dataset`; the `download@<dataset>` stages depend on them. `--section`
copies that section's dataset's data/raw/<dataset>/source.json into --out, which its training
stage depends on. Why three layers: appliedtorch.data.usage. No MLflow run.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.utils import output_set, write_text
from appliedtorch.data import usage
from appliedtorch.params import load_params

log = logging.getLogger("datasets")
SECTIONS = ("mlp", "cnn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--used", type=Path, help="e.g. data/used: one file per known dataset")
    what.add_argument("--section", choices=SECTIONS, help="the classifier whose data to pick")
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, help="with --section, e.g. data/picked/mlp.json")
    args = parser.parse_args()
    if args.section and not args.out:
        parser.error("--section needs --out")

    p = load_params(args.params)  # the whole file, validated before any work
    if args.used:
        in_use = {getattr(p, s).dataset for s in SECTIONS}
        with output_set(args.used) as out:  # all of them, or none changes
            for name, word in usage.usage(in_use).items():
                write_text(out.path(args.used / name), word + "\n")
        log.info("datasets in use: %s", ", ".join(sorted(in_use)))
        return
    name = getattr(p, args.section).dataset
    usage.write_picked(args.out, name, args.raw / name)
    log.info("%s trains on %s", args.section, name)


if __name__ == "__main__":
    run_stage(main)
