"""benchmarks/gpu.py and benchmarks/members.py at tiny sizes on the CPU: they run as
docs/performance.md writes them, and report what they measured or why they skipped it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # each script trains several small runs: about a minute


def documented(script: str) -> list[str]:
    """docs/performance.md's smoke command for `script`, as written there."""
    text = (REPO / "docs" / "performance.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith(f"python {script} --quick")]
    _, *args = line.split("  #")[0].split()
    return [sys.executable, *args]


def run(command: list[str]) -> str:
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def gpu_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    stdout = run([*documented("benchmarks/gpu.py"), "--device", "cpu", "--json", str(out)])
    assert json.loads(stdout) == json.loads(out.read_text())
    return json.loads(out.read_text())


def test_gpu_benchmark_times_both_loops_of_both_nets(gpu_report):
    for arch in ("mlp", "cnn"):
        epoch = gpu_report[f"{arch}_epoch"]
        assert epoch["tutorial_epoch_seconds"] > 0 and epoch["project_epoch_seconds"] > 0
        assert epoch["speedup"] == pytest.approx(
            epoch["tutorial_epoch_seconds"] / epoch["project_epoch_seconds"]
        )
        assert epoch["project_arithmetic"]["gflops"] > 0


def test_gpu_benchmark_times_members_together_and_apart(gpu_report):
    for arch in ("mlp", "cnn"):
        one, many = gpu_report[f"{arch}_members"]["rows"]
        assert (one["members"], many["members"]) == (1, 2)
        assert many["together_seconds"] > 0 and many["sequential_seconds"] > 0


def test_gpu_benchmark_says_why_the_captured_step_was_skipped_on_the_cpu(gpu_report):
    assert gpu_report["machine"]["gpu"] is None
    assert "CUDA" in gpu_report["captured_step"]["skipped"]
    assert "CUDA" in gpu_report["compiled_step"]["skipped"]


def test_members_benchmark_reports_one_seed_and_each_count():
    report = json.loads(run(documented("benchmarks/members.py")))
    assert [r["members"] for r in report["rows"]] == [1, 2]
    first, second = report["rows"]
    assert first["sequential_seconds"] == report["one_seed_seconds"]
    assert second["together_vs_one_seed"] == pytest.approx(
        second["together_seconds"] / report["one_seed_seconds"]
    )
    assert report["cpu"]["model"] and report["gpu"] is None
