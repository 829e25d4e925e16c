"""benchmarks/run.py on small data: what it prints and records is what it measured.

benchmarks/ is one module per measurement (epochs.py, evaluation.py, ...) that imports its
siblings by name, as `python benchmarks/x.py` puts that folder on sys.path; a test here does so
with `monkeypatch.syspath_prepend`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from appliedtorch.machine.hardware import cpu_description, native_bf16
from helpers import REPO


def smoke_command() -> list[str]:
    """docs/performance.md's smoke run, as written there."""
    text = (REPO / "docs" / "performance.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("python benchmarks/run.py --quick")]
    _, *args = line.split("  #")[0].split()
    return [sys.executable, *args]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "benchmarks.json"
    # A user's shell: no OMP_WAIT_POLICY (the suite's conftest.py set one in its environment).
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    proc = subprocess.run(
        [*smoke_command(), "--json", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text()), out


def test_the_table_names_the_cpu_and_its_flags(quick_run):
    stdout, report, _ = quick_run
    cpu = cpu_description()
    first = stdout.splitlines()[0]
    assert first.startswith(f"CPU {cpu['model']}") and f"flags: {' '.join(cpu['flags'])}" in first
    assert report["machine"]["cpu_model"]["flags"] == cpu["flags"]


def test_each_run_appends_its_table_to_the_run_log_beside_its_json(quick_run):
    _, report, out = quick_run
    (entry,) = [
        json.loads(line) for line in (out.parent / "history.jsonl").read_text().splitlines()
    ]
    assert entry["benchmark"] == "run" and entry["file"] == str(out)
    assert entry["table"] == report["table"] and entry["cpu"] == cpu_description()["model"]


def test_auto_choices_are_printed_with_each_candidates_time(quick_run):
    stdout, report, _ = quick_run
    for arch in ("mlp", "cnn"):
        probe = report["results"]["auto"][arch]
        assert probe["choice"] in probe["step_seconds"] and probe["probe_seconds"] > 0
        fastest = min(probe["step_seconds"], key=probe["step_seconds"].get)
        assert probe["choice"] == fastest
        assert f"auto for {arch}: {probe['choice']} (per step: " in stdout


def test_each_loop_runs_as_its_user_runs_it(quick_run):
    """The project's loop in a process set up as a stage (appliedtorch's OpenMP default), the
    tutorial's in one with torch's defaults and the threads torch picks."""
    _, report, _ = quick_run
    # appliedtorch decided the wait from the run queue (core/openmp.py); the tutorial kept none
    assert report["machine"]["openmp_wait"].split(" (")[0] in ("spin", "passive")
    r = report["results"]["mlp_epoch"]
    assert r["tutorial_omp_wait_policy"] is None
    assert r["tutorial_threads"] == report["machine"]["torch_default_threads"]


def test_epochs_are_the_best_of_alternated_runs(quick_run):
    _, report, _ = quick_run
    r = report["results"]["mlp_epoch"]
    assert len(r["tutorial_runs"]) == 2 and r["tutorial_seconds"] == min(r["tutorial_runs"])
    chosen = r["project_by_threads"][str(r["project_threads"])]
    assert len(chosen["runs"]) == 2 and r["project_seconds"] == min(chosen["runs"])
    assert r["ratio"] == pytest.approx(r["tutorial_seconds"] / r["project_seconds"])
    assert r["project_threads"] == 1  # params.yaml's mlp.threads comes first
    # the MLP's bf16 is false in params.yaml: honoured, never probed
    assert r["bf16_setting"] is False and r["format"] == "fp32"
    peak = r["project_arithmetic"]
    assert peak["format"] == "fp32" and 0 < peak["percent_of_peak"] < 100
    row = next(row for row in report["table"] if row[0].startswith("MLP epoch"))
    assert row[3] == f"{r['ratio']:.1f}x" and row[5] == ("ok" if r["ratio"] >= 8 else "MISSED")


def test_the_dtype_auto_did_not_choose_is_timed_where_bf16_is_native(quick_run):
    _, report, _ = quick_run
    other = report["results"]["mlp_epoch"]["project_other"]
    if not native_bf16(torch.device("cpu")):
        assert other is None  # emulated bf16 is not a candidate: nothing to compare
        return
    assert other["format"] == "bf16" and len(other["runs"]) == 2
    assert other["seconds"] == min(other["runs"])
    project = report["results"]["mlp_epoch"]["project_seconds"]
    assert other["auto_over_other"] == pytest.approx(project / other["seconds"])
    (row,) = [row for row in report["table"] if row[0].startswith("  project, bf16 forced")]
    assert row[0] == "  project, bf16 forced (params.yaml: fp32)"  # mlp.bf16 is false, not auto
    assert (
        row[5]
        == f"{'ok' if other['auto_over_other'] <= 1.1 else 'MISSED'} ({other['auto_over_other']:.2f}x)"
    )


def test_the_epoch_benchmark_times_what_the_stages_probe_chose(monkeypatch):
    """The warm-up run is 3 batches, too short to probe; the stage's run is not: the benchmark
    must time the dtype the probe picks for the stage, not the untimed fp32 of a short run."""
    from appliedtorch.classify.training import tuning
    from appliedtorch.data.loading import synthetic_in_memory
    from appliedtorch.machine import autotune
    from appliedtorch.params import load_params

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import epochs
    import loops

    probes = []

    def fake(question, candidates, **kwargs):
        probes.append(sorted(candidates))
        return autotune.Tuned("bfloat16", dict.fromkeys(candidates, 0.1), 0.5, False)

    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)
    monkeypatch.setattr(epochs, "native_bf16", lambda device: True)
    monkeypatch.setattr(tuning, "pick_fastest", fake)
    base = loops.timed_section(load_params(REPO / "params.yaml"), "cnn")
    data = synthetic_in_memory("cifar10", 512, 64)
    params = REPO / "params.yaml"
    r = epochs.measure("cnn", data, params, base, batches=2, reps=1, device="cpu", seed=0)
    # probed once for each thread count warmed up (as the stage would: not cached in a test)
    assert probes == [["bfloat16", "float32"]] * len(r["project_by_threads"])
    assert r["bf16_setting"] == "auto" and r["format"] == "bf16"
    assert r["project_other"]["format"] == "fp32" and len(r["project_other"]["runs"]) == 1
    assert tuning.PROBE_SHARE == 0.1  # restored after the warm-up
