"""Same params and seed, same metrics.json on one machine, whatever its load (timings aside).

What describes a run rather than its result (how idle OpenMP threads waited, the load it met,
what `auto` measured) goes to run.json and the MLflow tags; metrics.json holds numbers that the
seed decides. The second run here starts beside one busy process per CPU, so its OpenMP wait is
decided otherwise, and any `auto` choice is made under load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from appliedtorch.data.download.fetch import download
from helpers import run_script

pytestmark = pytest.mark.slow

BUSY = "while True: pass"


def train(tmp_path: Path, data_dir: Path, params: Path, name: str) -> tuple[bytes, dict]:
    """Run the MLP stage; (metrics.json without its timings, as bytes; run.json)."""
    reports = tmp_path / name / "reports"
    proc = run_script(
        "stages/train.py", "--section", "mlp", "--params", params, "--data", data_dir,
        "--model", tmp_path / name / "mlp.pt", "--reports", reports, cwd=tmp_path,
        env={"OMP_WAIT_POLICY": None},  # appliedtorch decides it, from the load it finds
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((reports / "metrics.json").read_text())
    numbers = {k: v for k, v in metrics.items() if not k.endswith("seconds")}
    return json.dumps(numbers, indent=2, sort_keys=True).encode(), json.loads(
        (reports / "run.json").read_text()
    )


def test_a_seeded_rerun_beside_busy_processes_writes_the_same_metrics(
    tmp_path, tracking_uri, params_file
):
    data_dir = tmp_path / "data" / "mnist"
    download("mnist", data_dir, source="synthetic", synthetic_sizes=(512, 128))
    # `auto` choices made where they run: the second run makes them under load
    mlp = {"epochs": 2, "batch_size": 32, "bf16": "auto", "threads": "auto"}
    params = params_file({"device": "cpu", "mlp": mlp, "tracking": {"system_metrics": False}})
    quiet, quiet_run = train(tmp_path, data_dir, params, "quiet")
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(os.cpu_count() or 2)]
    try:
        loaded, loaded_run = train(tmp_path, data_dir, params, "loaded")
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert loaded == quiet
    # the load was seen and recorded where it belongs: not in metrics.json
    assert loaded_run["openmp_wait"].startswith("passive"), loaded_run
    assert b"openmp_wait" not in loaded and b"data_source" not in loaded
    assert quiet_run["compute_dtype"] == loaded_run["compute_dtype"]
