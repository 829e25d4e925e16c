"""End to end: the repository in a temporary git+DVC workspace, `dvc repro` with shrunk params.

Checks the outputs, the MLflow runs, that a second `dvc repro` has nothing to do although Python
wrote bytecode into the workspace (as it does on users' machines), and that every project file a
stage loaded while it ran, lazy imports included, is covered by that stage's `deps`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from conftest import REPO, copy_workspace

BIN = Path(sys.executable).parent
GIT_ENV = {
    "GIT_AUTHOR_NAME": "appliedtorch-tests",
    "GIT_AUTHOR_EMAIL": "tests@appliedtorch.invalid",
    "GIT_COMMITTER_NAME": "appliedtorch-tests",
    "GIT_COMMITTER_EMAIL": "tests@appliedtorch.invalid",
}

# Small enough for CI, large enough that every stage does real work.
SHRUNK = {
    "device": "cpu",
    "data": {
        "source": "synthetic",
        "synthetic": {
            "mnist_train": 1200,
            "mnist_test": 300,
            "cifar10_train": 600,
            "cifar10_test": 200,
        },
    },
    "mlp": {"epochs": 2, "train_limit": 1000},
    "cnn": {"epochs": 1, "train_limit": 500},
    "pinn": {"adam_steps": 300, "lbfgs_steps": 50},
}


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_queue(ws: Path, env: dict, jobs: int = 1, timeout: float = 600, kill: bool = False) -> str:
    """`dvc queue start -j jobs`, wait until nothing is queued or running; `dvc queue status`."""
    import re
    import time

    dvc = str(BIN / "dvc")
    try:
        run([dvc, "queue", "start", "-j", str(jobs)], ws, env)
        deadline = time.monotonic() + timeout
        while True:
            status = run([dvc, "queue", "status"], ws, env).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        run([dvc, "queue", "stop", *(["--kill"] if kill else [])], ws, env, check=False)


def make_workspace(root: Path, overrides: dict, tracking_uri: str) -> tuple[Path, dict]:
    """Copy the project into a fresh git+DVC repository; return it and the env to run DVC in."""
    ws = root / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, ws / name)
    for name in ("stages", "src", "recipes"):
        shutil.copytree(
            REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        **GIT_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DVC_NO_ANALYTICS": "1",
        # The stages run the workspace's copy of the code (as a user's editable install would),
        # so edits there count, and Python's bytecode lands there.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    # Bytecode writing on, as on every user's machine (this environment and CI turn it off).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    run(["git", "init", "-q", "-b", "main"], ws, env)
    run([str(BIN / "dvc"), "init", "-q"], ws, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], ws, env)
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "workspace"], ws, env)
    return ws, env


# Put on PYTHONPATH as `sitecustomize`: every Python process records, at exit, the workspace files
# it loaded (lazy imports inside functions included) and its command line.
RECORD_LOADED = """
import atexit, json, os, sys
from pathlib import Path


def _record_loaded_files():
    root = Path(os.environ["RECORD_LOADED_ROOT"]).resolve()
    env_root = Path(sys.prefix).resolve()  # a virtual environment inside the workspace is not code
    files = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if not f or not Path(f).is_file() or "site-packages" in Path(f).parts:
            continue
        f = Path(f).resolve()
        if f.is_relative_to(root) and not f.is_relative_to(env_root):
            files.add(f.relative_to(root).as_posix())
    if files:
        out = Path(os.environ["RECORD_LOADED_DIR"]) / f"{os.getpid()}.json"
        script = str(Path(sys.argv[0]).resolve())
        out.write_text(json.dumps({"script": script, "argv": sys.argv, "files": sorted(files)}))


atexit.register(_record_loaded_files)
"""


def record_loaded_files(env: dict, ws: Path, root: Path) -> Path:
    """Make every Python process started with `env` record the `ws` files it loads; return where."""
    site, out = root / "record-site", root / "loaded"
    site.mkdir()
    out.mkdir()
    (site / "sitecustomize.py").write_text(RECORD_LOADED)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(site)])
    env["RECORD_LOADED_ROOT"], env["RECORD_LOADED_DIR"] = str(ws), str(out)
    return out


def assert_loaded_files_covered_by_deps(ws: Path, records: Path) -> set[str]:
    """Each stage run loaded only files its dvc.yaml deps cover; return the scripts seen."""
    from test_stage_deps import deps_cover, stage_deps

    deps = stage_deps(ws / "dvc.yaml")
    seen, problems = set(), {}
    for record in sorted(records.glob("*.json")):
        entry = json.loads(record.read_text())
        script = Path(entry["script"]).relative_to(ws.resolve()).as_posix()
        assert script in deps, f"a process that is no stage loaded workspace files: {entry}"
        seen.add(script)
        if missing := [f for f in entry["files"] if not deps_cover(deps[script], f)]:
            problems[script] = missing
    assert problems == {}, f"files loaded while running but not in the stage's deps: {problems}"
    return seen


STAGES = ("download", "train_mlp", "train_cnn", "pinn", "math_demos", "report")
SUBPACKAGES = ("core", "data", "classify", "pinn", "demos", "report")

EXPERIMENTS = {
    "math-demos": "math_demos",
    "pinn-ode": "pinn",
    "mnist-mlp": "train_mlp",
    "cifar10-cnn": "train_cnn",
}


@pytest.mark.slow
def test_full_repro_on_synthetic_data_then_nothing_to_do(built_pipeline, tmp_path):
    """`dvc repro` builds every stage offline; runs lead back to the data dvc.lock records.

    The session's `built_pipeline` is that `dvc repro` (conftest); this checks what it left, on
    a copy."""
    built, _ = built_pipeline
    # Every stage script ran, and loaded (lazily too) only files its deps cover.
    ran = assert_loaded_files_covered_by_deps(built, built.parent / "loaded")
    assert ran == {f"stages/{name}.py" for name in STAGES}, ran
    ws, env = copy_workspace(built_pipeline, tmp_path)
    dvc = str(BIN / "dvc")
    # Python wrote bytecode beside the code the stages ran; DVC must not count it as a change.
    pycache = {
        p.parent.parent.relative_to(ws).as_posix() for p in ws.glob("src/**/__pycache__/*.pyc")
    }
    assert {f"src/appliedtorch/{sub}" for sub in SUBPACKAGES} <= pycache, pycache

    math = json.loads((ws / "reports/math/metrics.json").read_text())
    assert math["max_error"] < 1e-6
    pinn = json.loads((ws / "reports/pinn/metrics.json").read_text())
    assert pinn["max_abs_error"] < 1e-2
    mlp = json.loads((ws / "reports/mlp/metrics.json").read_text())
    assert mlp["test_accuracy"] > 0.3  # chance is 0.1
    cnn = json.loads((ws / "reports/cnn/metrics.json").read_text())
    assert 0 <= cnn["test_accuracy"] <= 1
    for png in (
        "math/gradient_descent.png", "math/fft_spectrum.png", "pinn/solution.png",
        "mlp/confusion_matrix.png", "cnn/loss.png", "cnn/predictions.png",
    ):  # fmt: skip
        assert (ws / "reports" / png).stat().st_size > 1000
    for model in ("pinn.pt", "mlp.pt", "cnn.pt"):
        assert (ws / "models" / model).exists()
    page = (ws / "reports/index.html").read_text()
    assert "SYNTHETIC DATA" in page

    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    locked_md5 = {name: lock[f"download@{name}"]["outs"][0]["md5"] for name in ("mnist", "cifar10")}
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    # The commit the stages ran at: the fixture committed dvc.lock after them.
    head = run(["git", "rev-parse", "HEAD~1"], ws, env).stdout.strip()
    for experiment, stage in EXPERIMENTS.items():
        runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert len(runs) == 1
        tags = runs[0].data.tags
        assert runs[0].info.status == "FINISHED"
        assert tags["dvc.stage"] == stage and tags["git.commit"] == head
        assert runs[0].data.params["seed"] == "42"
    for experiment, dataset in (("mnist-mlp", "mnist"), ("cifar10-cnn", "cifar10")):
        (r,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        assert r.data.tags[f"data.{dataset}.md5"] == locked_md5[dataset]
        assert r.data.tags["data.source"] == "synthetic"
        # The run's dataset inputs are the data dvc.lock records; its system metrics were sampled.
        inputs = {
            (i.dataset.name, i.dataset.digest, tag.value)
            for i in r.inputs.dataset_inputs
            for tag in i.tags
            if tag.key == "mlflow.data.context"
        }
        assert inputs == {
            (f"{dataset}-train", locked_md5[dataset], "training"),
            (f"{dataset}-test", locked_md5[dataset], "testing"),
        }
        for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
            assert key in r.data.metrics, sorted(r.data.metrics)

    # `dvc plots show` renders the plots of dvc.yaml, each with data from this workspace: the
    # data-series plots with their templates, the classifier figures as images.
    shown = json.loads(run([dvc, "plots", "show", "--json"], ws, env).stdout)
    plots = shown["data"]
    assert not shown.get("errors"), shown.get("errors")
    series = {
        "MNIST MLP loss", "CIFAR-10 CNN loss", "Test accuracy",
        "MNIST MLP confusion matrix", "CIFAR-10 CNN confusion matrix",
        "PINN solution", "PINN pointwise error",
    }  # fmt: skip
    images = {
        f"reports/{arch}/{name}.png"
        for arch in ("mlp", "cnn")
        for name in ("loss", "confusion_matrix", "per_class_accuracy", "predictions")
    }
    assert set(plots) == series | images, sorted(plots)  # each drawn once, none again by default
    kinds = {name: [p.get("type") for p in plots[name]] for name in plots}
    assert all(kinds[name] == ["vega"] for name in series), kinds
    assert all(kinds[name] == ["image"] for name in images), kinds
    # --json renders no page; DVC copies each image where its `url` points (dvc_plots/).
    assert not (ws / "dvc_plots" / "index.html").exists()
    for name in images:
        (entry,) = plots[name]
        assert Path(entry["url"]).read_bytes() == (ws / name).read_bytes()

    lock_before = (ws / "dvc.lock").stat().st_mtime_ns
    start = time.perf_counter()
    again = run([dvc, "repro"], ws, env)
    noop_seconds = time.perf_counter() - start
    assert "Running stage" not in again.stdout, again.stdout
    stages = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    for stage in stages:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout
    assert (ws / "dvc.lock").stat().st_mtime_ns == lock_before
    status = run([dvc, "status"], ws, env).stdout.strip()
    assert status.endswith("Data and pipelines are up to date."), status
    print(f"no-op `dvc repro`: {noop_seconds:.2f} s")
