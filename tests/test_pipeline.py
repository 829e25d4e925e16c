"""End to end: the repository in a temporary git+DVC workspace, `dvc repro` with shrunk params.

The session's `built_pipeline` (conftest.py) is that `dvc repro`, run once; each test here checks
one thing it left, so one failure does not hide the others: every project file a stage loaded
while it ran (lazy imports included) is covered by that stage's `deps`; the outputs; the MLflow
runs and the data they name; `dvc plots show`; and that a second `dvc repro` has nothing to do
although Python wrote bytecode into the workspace (as it does on users' machines).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import BIN
from helpers.deps import deps_cover, schema_only, script_deps, stage_deps, stage_script
from helpers.repo import copy_workspace, run

pytestmark = pytest.mark.slow  # every test reads the session's full `dvc repro`

SCRIPTS = ("datasets", "download", "train", "pinn", "math_demos", "register", "report")
SCRIPTS += ("pinn_observations", "pinn_inverse", "pinn_family")
SUBPACKAGES = ("core", "machine", "tracking", "data", "classify", "pinn", "demos", "report")
EXPERIMENTS = {
    "math-demos": "math_demos",
    "pinn-ode": "pinn",
    "pinn-inverse": "pinn_inverse",
    "pinn-family": "pinn_family",
    "mnist-mlp": "train_mlp",
    "cifar10-cnn": "train_cnn",
}
CLASSIFIER_DATA = {"mnist-mlp": "mnist", "cifar10-cnn": "cifar10"}


@pytest.fixture(scope="module")
def built(built_pipeline, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the built workspace that this module's tests read (DVC writes into it)."""
    return copy_workspace(built_pipeline, tmp_path_factory.mktemp("pipeline"))


def only_run(ws: Path, experiment: str) -> mlflow.entities.Run:
    """The one run of `experiment` in the workspace's mlflow.db."""
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def locked_md5(ws: Path, dataset: str) -> str:
    """The directory hash dvc.lock records for the dataset's download."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    return lock[f"download@{dataset}"]["outs"][0]["md5"]


def test_every_stage_ran_and_loaded_only_files_its_deps_cover(built_pipeline):
    ws, _ = built_pipeline
    deps = script_deps(ws / "dvc.yaml")
    for stage, stage_dep_list in stage_deps(ws / "dvc.yaml").items():  # + schema-only files
        deps[stage_script(stage_dep_list)] += sorted(schema_only(stage, ws / "dvc.yaml"))
    seen, problems = set(), {}
    for record in sorted((ws.parent / "loaded").glob("*.json")):
        entry = json.loads(record.read_text())
        script = Path(entry["script"]).relative_to(ws.resolve()).as_posix()
        assert script in deps, f"a process that is no stage loaded workspace files: {entry}"
        seen.add(script)
        if missing := [f for f in entry["files"] if not deps_cover(deps[script], f)]:
            problems[script] = missing
    assert problems == {}, f"files loaded while running but not in the stage's deps: {problems}"
    assert seen == {f"stages/{name}.py" for name in SCRIPTS}, seen


def test_python_wrote_bytecode_beside_the_code_it_ran(built_pipeline):
    # What test_a_second_repro_has_nothing_to_do relies on: there is bytecode for DVC to ignore.
    ws, _ = built_pipeline
    pycache = {
        p.parent.parent.relative_to(ws).as_posix() for p in ws.glob("src/**/__pycache__/*.pyc")
    }
    assert {f"src/appliedtorch/{sub}" for sub in SUBPACKAGES} <= pycache, pycache


def test_metrics_are_those_of_working_models(built):
    ws, _ = built
    reports = ws / "reports"
    assert json.loads((reports / "math/demos.json").read_text())["max_error"] < 1e-6
    assert json.loads((reports / "pinn/details.json").read_text())["max_abs_error"] < 1e-2
    assert json.loads((reports / "mlp/metrics.json").read_text())["test_accuracy"] > 0.3  # 0.1
    assert 0 <= json.loads((reports / "cnn/metrics.json").read_text())["test_accuracy"] <= 1


def test_dvc_metrics_show_fits_a_wide_terminal(built):
    """metrics.json files hold the headline numbers (per-class values, PINN phases and each
    demo's values are in their own files), so the table stays readable, and the PINN's and
    demos' errors show as correct digits where the table rounds the errors to 0."""
    ws, env = built
    table = run([str(BIN / "dvc"), "metrics", "show"], ws, env).stdout
    width = max(len(line) for line in table.splitlines())
    # a 200-column terminal (issue 36): headline numbers only, strings in run.json and tags
    assert width <= 200, f"dvc metrics show is {width} characters wide:\n{table}"
    assert "max_error_digits" in table and "per_class_accuracy" not in table
    for stage in ("mlp", "cnn", "pinn", "math", "pinn_inverse", "pinn_family"):
        assert len(json.loads((ws / "reports" / stage / "metrics.json").read_text())) <= 16


def test_figures_models_and_report_page_are_written(built):
    ws, _ = built
    figures = ["math/gradient_descent.png", "math/fft_spectrum.png", "pinn/solution.png"]
    figures += ["mlp/confusion_matrix.png", "cnn/loss.png", "cnn/predictions.png"]
    small = [f for f in figures if (ws / "reports" / f).stat().st_size <= 1000]
    assert small == [], f"figures of 1000 bytes or less: {small}"
    assert [m for m in ("pinn.pt", "mlp.pt", "cnn.pt") if not (ws / "models" / m).exists()] == []
    assert "SYNTHETIC DATA" in (ws / "reports/index.html").read_text()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_stage_logged_one_finished_run_at_its_commit(built, experiment):
    ws, env = built
    # The commit the stages ran at: the fixture committed dvc.lock after them.
    head = run(["git", "rev-parse", "HEAD~1"], ws, env).stdout.strip()
    r = only_run(ws, experiment)
    assert r.info.status == "FINISHED"
    assert r.data.tags["dvc.stage"] == EXPERIMENTS[experiment]
    assert r.data.tags["git.commit"] == head
    assert r.data.params["seed"] == "42"


@pytest.mark.parametrize("experiment", CLASSIFIER_DATA)
def test_classifier_run_names_the_data_dvc_lock_records(built, experiment):
    ws, _ = built
    dataset = CLASSIFIER_DATA[experiment]
    md5 = locked_md5(ws, dataset)
    r = only_run(ws, experiment)
    assert r.data.tags[f"data.{dataset}.md5"] == md5
    assert r.data.tags["data.source"] == "synthetic"
    inputs = {
        (i.dataset.name, i.dataset.digest, tag.value)
        for i in r.inputs.dataset_inputs
        for tag in i.tags
        if tag.key == "mlflow.data.context"
    }
    assert inputs == {
        (f"{dataset}-train", md5, "training"),
        (f"{dataset}-test", md5, "testing"),
    }


@pytest.mark.parametrize("experiment", CLASSIFIER_DATA)
def test_classifier_run_sampled_system_metrics(built, experiment):
    ws, _ = built
    metrics = only_run(ws, experiment).data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in metrics, sorted(metrics)


def test_dvc_plots_show_renders_every_plot_with_this_workspace_data(built):
    """The data-series plots of dvc.yaml with their templates, the classifier figures as images,
    each drawn once (none again by default)."""
    ws, env = built
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], ws, env).stdout)
    plots = shown["data"]
    assert not shown.get("errors"), shown.get("errors")
    series = {"MLP loss", "CNN loss", "Test accuracy", "PINN solution"}
    series |= {"MLP confusion matrix", "CNN confusion matrix"}
    series |= {"PINN pointwise error", "PINN inverse fit", "PINN inverse k over training"}
    series |= {"PINN family error by k"}
    images = {
        f"reports/{arch}/{name}.png"
        for arch in ("mlp", "cnn")
        for name in ("loss", "confusion_matrix", "per_class_accuracy", "predictions")
    }
    images |= {f"reports/pinn_inverse/{n}.png" for n in ("fit", "residual", "k_trace")}
    images |= {f"reports/pinn_family/{n}.png" for n in ("error_by_k", "solutions", "loss")}
    assert set(plots) == series | images, sorted(plots)
    kinds = {name: [p.get("type") for p in plots[name]] for name in plots}
    assert all(kinds[name] == ["vega"] for name in series), kinds
    assert all(kinds[name] == ["image"] for name in images), kinds
    # --json renders no page; DVC copies each image where its `url` points (dvc_plots/).
    assert not (ws / "dvc_plots" / "index.html").exists()
    for name in images:
        (entry,) = plots[name]
        assert Path(entry["url"]).read_bytes() == (ws / name).read_bytes(), name


def test_a_second_repro_has_nothing_to_do(built_pipeline, tmp_path):
    ws, env = copy_workspace(built_pipeline, tmp_path)  # its own: a failure here reruns stages
    dvc = str(BIN / "dvc")
    lock_before = (ws / "dvc.lock").stat().st_mtime_ns
    start = time.perf_counter()
    again = run([dvc, "repro"], ws, env)
    noop_seconds = time.perf_counter() - start
    assert "Running stage" not in again.stdout, again.stdout
    for stage in yaml.safe_load((ws / "dvc.lock").read_text())["stages"]:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout
    assert (ws / "dvc.lock").stat().st_mtime_ns == lock_before
    status = run([dvc, "status"], ws, env).stdout.strip()
    assert status.endswith("Data and pipelines are up to date."), status
    print(f"no-op `dvc repro`: {noop_seconds:.2f} s")
