"""DVC stage `download@<dataset>`: fetch (or generate) one dataset into data/raw/<dataset>, verified.

    python stages/download.py --params params.yaml --dataset mnist --used data/used/mnist \
        --out data/raw/mnist

`data.source` in params.yaml picks upstream (a verified copy in /usr/share/datasets/<dataset>
if the OS has one, else torchvision's URLs and md5 sums), a mirror (a directory or http(s):// URL)
or synthetic. Nothing is left in --out unless every file verified. A dataset no classifier
trains on (--used says "unused", from the `datasets` stage) is not fetched: --out holds only a
source.json saying so.
No MLflow run: the training stages tag their runs with the data's source and hash instead.
"""

from __future__ import annotations

from appliedtorch.core import openmp

openmp.settle()  # before torch loads: libgomp reads how its threads wait once, as it loads

import argparse
import logging
import time
from pathlib import Path

from appliedtorch.core.cli import run_stage
from appliedtorch.core.utils import output_set, write_json
from appliedtorch.data.datasets import DATASETS, dataset
from appliedtorch.data.download.fetch import download
from appliedtorch.data.limits import Limits
from appliedtorch.data.usage import SOURCE_FILE, is_used, unused_record
from appliedtorch.params import load_params

log = logging.getLogger("download")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--used", type=Path, help="data/used/<dataset>; absent: used")
    parser.add_argument("--out", type=Path, required=True, help="e.g. data/raw/mnist")
    args = parser.parse_args()

    p = load_params(args.params)
    if args.used and not is_used(args.used):
        with output_set(args.out) as out:
            write_json(out.path(args.out / SOURCE_FILE), unused_record(args.dataset))
        log.info("%s: no classifier trains on it; nothing downloaded", args.dataset)
        return
    stand_in = dataset(args.dataset).synthetic  # fashion-mnist's takes the mnist sizes
    sizes = (
        getattr(p.data.synthetic, f"{stand_in}_train"),
        getattr(p.data.synthetic, f"{stand_in}_test"),
    )
    start = time.perf_counter()
    record = download(
        args.dataset,
        args.out,
        p.data.source,
        limits=Limits.from_params(p.data),
        synthetic_seed=p.data.synthetic.seed,
        synthetic_sizes=sizes,
    )
    size = sum(f["bytes"] for f in record["files"].values())
    log.info(
        "%s: %d train + %d test images from %s into %s (%.1f MB) in %.1f s",
        args.dataset,
        record["train"],
        record["test"],
        record["source"],
        args.out,
        size / 1e6,
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    run_stage(main)
