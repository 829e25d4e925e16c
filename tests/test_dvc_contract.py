"""What `dvc repro` promises a user, checked with real DVC on a tiny pipeline, bytecode writing on.

One tiny `dvc repro` builds a workspace for the module; each test works on its own copy of it:
- an edit reruns exactly the stages whose code it touches (`dvc status`, plus what lies
  downstream in `dvc dag`);
- the run-cache brings back an earlier experiment's outputs without training;
- after a stage fails under `dvc repro` (DVC deleted its outputs before running it),
  `dvc checkout` brings back the previous outputs byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import pytest
import yaml

from helpers import BIN
from helpers.repo import copy_workspace, make_workspace, run
from helpers.servers import free_port

DVC = str(BIN / "dvc")

EPOCH_LINE = re.compile(r"epoch \d+:")


def sha256_tree(ws: Path, *folders: str) -> dict[str, str]:
    """sha256 of every file under `folders` of `ws`, by path relative to `ws`."""
    return {
        p.relative_to(ws).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted((ws / folder).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def workspace(built_pipeline, tmp_path) -> tuple[Path, dict]:
    """A copy of the session's built workspace (git, DVC cache, bytecode and MLflow database
    included) for one test, its runs going to its own copy of mlflow.db."""
    ws, env = copy_workspace(built_pipeline, tmp_path)
    assert "PYTHONDONTWRITEBYTECODE" not in env
    return ws, {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}"}


def changed_stages(ws: Path, env: dict) -> set[str]:
    """The stages `dvc status` finds changed (no stage runs)."""
    return set(json.loads(run([DVC, "status", "--json"], ws, env).stdout))


def downstream(ws: Path, env: dict, stages: set[str]) -> set[str]:
    """`stages` and every stage that consumes their outputs, from `dvc dag`'s edges."""
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', run([DVC, "dag", "--dot"], ws, env).stdout)
    assert edges, "dvc dag --dot printed no edges"
    out = set(stages)
    while True:
        more = {b for a, b in edges if a in out} - out
        if not more:
            return out
        out |= more


DOWNLOADS = {"download@mnist", "download@fashion-mnist", "download@cifar10"}
PICKS = {"data@mlp", "data@cnn"}  # each section's dataset record
TRAINING = {"train_mlp", "train_cnn"}
PINNS = {"pinn", "pinn_observations", "pinn_inverse", "pinn_family"}
ALL = {"datasets"} | DOWNLOADS | PICKS | TRAINING | PINNS | {"math_demos", "report", "register"}
EDITS = {  # file edited (under src/appliedtorch): (stages whose deps change, stages that rerun)
    "pinn/solver.py": ({"pinn"}, {"pinn", "report"}),
    "pinn/inverse.py": ({"pinn_inverse"}, {"pinn_inverse", "report"}),
    "pinn/family.py": ({"pinn_family"}, {"pinn_family", "report"}),
    "pinn/problem.py": (PINNS, PINNS | {"report"}),
    # a schema edit reruns the stages that read its sections, not every stage that checks it
    "pinn/params.py": (PINNS | {"report"}, PINNS | {"report"}),
    "demos/checks.py": ({"math_demos"}, {"math_demos", "report"}),
    "classify/training/loop.py": (TRAINING, TRAINING | {"report", "register"}),
    "report/page.py": ({"report"}, {"report"}),
    "data/download/fetch.py": (DOWNLOADS, ALL - PINNS - {"datasets", "math_demos"}),
    "data/loading.py": (DOWNLOADS | TRAINING, ALL - PINNS - {"datasets", "math_demos"}),
    # pinn_observations writes a CSV and logs no run: no MLflow code
    "tracking/run.py": (
        ALL - DOWNLOADS - PICKS - {"datasets", "pinn_observations"},
        ALL - DOWNLOADS - PICKS - {"datasets", "pinn_observations"},
    ),
    "core/utils.py": (ALL, ALL),
}


@pytest.mark.slow
def test_an_edit_reruns_exactly_the_stages_that_use_the_code(workspace):
    ws, env = workspace
    # The built workspace is up to date, though Python wrote bytecode into it.
    assert list(ws.glob("src/appliedtorch/*/__pycache__/*.pyc"))
    assert changed_stages(ws, env) == set()
    for edited, (changed, rerun) in EDITS.items():
        path = ws / "src" / "appliedtorch" / edited
        original = path.read_text()
        path.write_text(original + "# an edit\n")
        try:
            seen = changed_stages(ws, env)
        finally:
            path.write_text(original)
        assert seen == changed, f"editing {edited}: {sorted(seen)}"
        assert downstream(ws, env, seen) == rerun, f"editing {edited}"
    assert changed_stages(ws, env) == set()


@pytest.mark.slow
def test_run_cache_restores_an_earlier_experiment_without_training(workspace):
    ws, env = workspace
    lr_a = yaml.safe_load((ws / "params.yaml").read_text())["mlp"]["lr"]
    outputs_a = sha256_tree(ws, "models", "reports/mlp")

    start = time.perf_counter()
    noop = run([DVC, "repro"], ws, env)
    noop_seconds = time.perf_counter() - start
    assert "Running stage" not in noop.stdout, noop.stdout

    trained = run([DVC, "exp", "run", "-S", f"mlp.lr={lr_a * 3}", "train_mlp"], ws, env)
    assert EPOCH_LINE.search(trained.stdout + trained.stderr), trained.stdout
    outputs_b = sha256_tree(ws, "models", "reports/mlp")
    assert outputs_b["models/mlp.pt"] != outputs_a["models/mlp.pt"]

    start = time.perf_counter()
    restored = run([DVC, "exp", "run", "-S", f"mlp.lr={lr_a}", "train_mlp"], ws, env)
    restore_seconds = time.perf_counter() - start
    log = restored.stdout + restored.stderr
    assert "Stage 'train_mlp' is cached - skipping run, checking out outputs" in log, log
    assert not EPOCH_LINE.search(log), log
    assert sha256_tree(ws, "models", "reports/mlp") == outputs_a
    print(f"no-op `dvc repro`: {noop_seconds:.2f} s; run-cache restore: {restore_seconds:.2f} s")


@pytest.mark.slow
def test_dvc_checkout_restores_outputs_after_a_stage_fails(workspace):
    ws, env = workspace
    before = sha256_tree(ws, "models", "reports")
    assert "models/mlp.pt" in before and "reports/mlp/metrics.json" in before

    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mlp"]["lr"] *= 2
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dead = {**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    failed = run([DVC, "repro"], ws, dead, check=False)
    assert failed.returncode != 0
    assert "is not reachable" in failed.stdout + failed.stderr, failed.stderr
    # What README states: DVC deleted the stage's outputs before running it, metrics included.
    assert not (ws / "models/mlp.pt").exists()
    assert not (ws / "reports/mlp/metrics.json").exists()

    run([DVC, "checkout"], ws, env)  # the one recovery command README documents
    assert sha256_tree(ws, "models", "reports") == before


# Tiny synthetic datasets: the download stages' work is not the point here.
TINY_DATA = {
    "device": "cpu",
    "data": {
        "source": "synthetic",
        "synthetic": {"mnist_train": 60, "mnist_test": 20, "cifar10_train": 60, "cifar10_test": 20},
    },
}
MLFLOW_IMPORT = re.compile(r"^\s*(import mlflow|from mlflow[\s.])", re.MULTILINE)


@pytest.mark.slow
def test_an_edit_to_the_mlflow_code_reruns_no_download(tmp_path):
    """Issue 19: a user without internet can edit the tracking code and rebuild. Every file under
    src/ that imports mlflow gets an edit; both downloads stay up to date (bytecode on)."""
    ws, env = make_workspace(tmp_path, TINY_DATA, tracking_uri=f"sqlite:///{tmp_path / 'db'}")
    assert "PYTHONDONTWRITEBYTECODE" not in env
    run([DVC, "repro", *sorted(DOWNLOADS)], ws, env)
    assert list(ws.glob("src/appliedtorch/**/__pycache__/*.pyc"))  # Python wrote bytecode
    assert changed_stages(ws, env) & DOWNLOADS == set()
    importers = [
        p for p in sorted((ws / "src").rglob("*.py")) if MLFLOW_IMPORT.search(p.read_text())
    ]
    assert importers, "no file under src/ imports mlflow: the test checks nothing"
    for path in importers:
        path.write_text(path.read_text() + "# an edit\n")
    assert changed_stages(ws, env) & DOWNLOADS == set(), [
        p.relative_to(ws).as_posix() for p in importers
    ]
    # The check sees an edit to what the downloads do load.
    fetch = ws / "src" / "appliedtorch" / "data" / "download" / "fetch.py"
    fetch.write_text(fetch.read_text() + "# an edit\n")
    assert changed_stages(ws, env) >= DOWNLOADS


@pytest.mark.slow
def test_a_classifier_follows_its_dataset_param_through_dvc(workspace):
    """`-S mlp.dataset=fashion-mnist` downloads that dataset and retrains the MLP on it, and
    nothing of the CNN's: its dataset's download and its training stay as they were (the
    `data@cnn` stage reruns, finds its dataset unchanged, and stops there). Switching back is
    served by the run-cache."""
    ws, env = workspace
    before = sha256_tree(ws, "models", "reports/mlp")
    cnn_before = sha256_tree(ws, "reports/cnn")
    out = run([DVC, "exp", "run", "-S", "mlp.dataset=fashion-mnist"], ws, env)
    log = out.stdout + out.stderr
    assert "Running stage 'download@fashion-mnist'" in log, log
    assert "Running stage 'train_mlp'" in log, log
    for kept in ("download@cifar10", "train_cnn"):
        assert f"Running stage '{kept}'" not in log, log
    assert sha256_tree(ws, "reports/cnn") == cnn_before
    assert json.loads((ws / "data/raw/mnist/source.json").read_text())["used"] is False
    per_class = json.loads((ws / "reports/mlp/per_class.json").read_text())
    assert {"T-shirt/top", "Ankle boot"} <= set(per_class["recall"])
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    picked = [d["path"] for d in lock["train_mlp"]["deps"] if d["path"].startswith("data/")]
    assert picked == ["data/picked/mlp.json"], picked
    assert json.loads((ws / "data/picked/mlp.json").read_text())["dataset"] == "fashion-mnist"
    runs = run([DVC, "exp", "show", "--json"], ws, env).stdout
    assert "fashion-mnist" in runs

    restored = run([DVC, "exp", "run", "-S", "mlp.dataset=mnist", "train_mlp"], ws, env)
    log = restored.stdout + restored.stderr
    assert "Stage 'train_mlp' is cached - skipping run, checking out outputs" in log, log
    assert sha256_tree(ws, "models", "reports/mlp") == before
