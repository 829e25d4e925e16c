"""appliedtorch.tracking: URI resolution, run contents (params, metrics, tags), FAILED runs, DVC hashes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from appliedtorch.tracking import dvc_md5, resolve_tracking_uri, stage_run


def test_relative_sqlite_uri_is_anchored_at_repo_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert (
        resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    )
    assert resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"


def test_relative_sqlite_uri_found_from_a_subdirectory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # No params file read in this process yet (another test's load_params would anchor it).
    monkeypatch.setattr("appliedtorch.core.params._loaded_from", None)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    sub = tmp_path / "stages" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"


def test_environment_uri_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/elsewhere.db")
    assert resolve_tracking_uri("sqlite:///mlflow.db") == "sqlite:////tmp/elsewhere.db"


def test_run_has_params_metrics_tags_and_artifacts(tracking_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lark")
    report = tmp_path / "metrics.json"
    report.write_text('{"x": 1}\n')
    params = {"mlp.lr": 0.001, "mlp.train_limit": None, "seed": 42, "device": "cpu"}
    with stage_run("unit-exp", "train_mlp", params, "ignored-because-env-wins") as run:
        for epoch in (1, 2, 3):
            run.log_metrics({"train_loss": 1.0 / epoch, "bad": float("nan")}, step=epoch)
        run.log_metrics({"test_accuracy": 0.9})
        run.log_artifacts([report, tmp_path / "missing.png"])
    client = mlflow.MlflowClient(tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert client.get_experiment(got.info.experiment_id).name == "unit-exp"
    assert got.data.params == {
        "mlp.lr": "0.001",
        "mlp.train_limit": "null",
        "seed": "42",
        "device": "cpu",
    }
    assert got.data.metrics["test_accuracy"] == pytest.approx(0.9)
    assert "bad" not in got.data.metrics
    history = client.get_metric_history(run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    tags = got.data.tags
    assert tags["dvc.stage"] == "train_mlp"
    assert tags["dvc.exp_name"] == "brisk-lark"
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert len(tags["params.md5"]) == 32
    assert got.info.run_name == "train_mlp@brisk-lark"
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["metrics.json"]


def test_failing_stage_ends_failed(tracking_uri):
    with pytest.raises(ZeroDivisionError), stage_run("unit-exp", "boom", {"seed": 1}) as run:
        run.log_metrics({"before": 1.0})
        1 / 0  # noqa: B018
    got = mlflow.MlflowClient(tracking_uri).get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.metrics == {"before": 1.0}


def test_dvc_md5_matches_what_dvc_records(tmp_path):
    """The data tag must equal the hash DVC writes for the same directory."""
    data = tmp_path / "repo" / "ds"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(bytes(range(256)) * 7)
    (data / "sub" / "b.txt").write_text("hello\n")
    repo = data.parent
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc = shutil.which("dvc") or str(Path(__import__("sys").executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    subprocess.run([dvc, "add", "-q", "ds"], cwd=repo, check=True)
    recorded = yaml.safe_load((repo / "ds.dvc").read_text())["outs"][0]["md5"]
    assert dvc_md5(data) == recorded
    assert dvc_md5(data / "a.bin") != recorded and len(dvc_md5(data / "a.bin")) == 32


def test_dvc_root_anchors_relative_sqlite_in_temp_experiment_copies(tmp_path, monkeypatch):
    """`dvc exp run --temp/--queue` runs in a copy but sets DVC_ROOT to the real workspace."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    copy = tmp_path / "workspace" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    (copy / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "workspace"))
    assert (
        resolve_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/workspace/mlflow.db"
    )


def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch):
    import socket
    import time

    from appliedtorch.core.errors import TrackingError

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    expected = f"MLflow tracking server {uri} is not reachable"
    with pytest.raises(TrackingError, match=expected), stage_run("unit-exp", "s", {"seed": 1}):
        raise AssertionError("the stage body must not run")
    assert time.monotonic() - start < 30


def test_training_run_logs_its_datasets_and_is_found_by_them(tracking_uri):
    """`data.<name>.md5` tags become MLflow dataset inputs: name, DVC md5 digest, source, split."""
    tags = {"data.mnist.md5": "0123456789abcdef0123456789abcdef.dir", "data.source": "synthetic"}
    with stage_run("unit-exp", "train_mlp", {"seed": 1}, None, tags) as run:
        pass
    with stage_run("unit-exp", "math_demos", {"seed": 1}, None, {}) as other:
        pass
    client = mlflow.MlflowClient(tracking_uri)
    inputs = client.get_run(run.run_id).inputs.dataset_inputs
    got = {
        (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source, t.value)
        for d in inputs
        for t in d.tags
        if t.key == "mlflow.data.context"
    }
    md5, source = tags["data.mnist.md5"], '{"uri": "synthetic"}'
    assert got == {
        ("mnist-train", md5, "dvc", source, "training"),
        ("mnist-test", md5, "dvc", source, "testing"),
    }
    assert client.get_run(other.run_id).inputs.dataset_inputs == []
    exp = client.get_experiment_by_name("unit-exp").experiment_id
    found = client.search_runs([exp], filter_string=f"dataset.digest = '{md5}'")
    assert [r.info.run_id for r in found] == [run.run_id]
    found = client.search_runs([exp], filter_string="dataset.name = 'mnist-test'")
    assert [r.info.run_id for r in found] == [run.run_id]


def test_experiments_are_marked_model_training_unless_a_person_chose(tracking_uri):
    """MLflow 3's UI opens `custom_model_development` experiments on their runs table."""
    client = mlflow.MlflowClient(tracking_uri)
    with stage_run("new-exp", "pinn", {"seed": 1}):
        pass
    assert client.get_experiment_by_name("new-exp").tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    old = client.create_experiment("old-exp")  # made before the tag existed: marked on next run
    chosen = client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    for name in ("old-exp", "chosen"):
        with stage_run(name, "pinn", {"seed": 1}):
            pass
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_system_metrics_are_sampled_when_asked(tracking_uri, monkeypatch):
    import time

    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    with stage_run("unit-exp", "train_mlp", {"seed": 1}, system_metrics=True) as on:
        time.sleep(2.5)  # the interval is 1 s: at least one sample
    with stage_run("unit-exp", "train_mlp", {"seed": 1}) as off:
        time.sleep(1.5)
    client = mlflow.MlflowClient(tracking_uri)
    metrics = client.get_run(on.run_id).data.metrics
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in metrics, sorted(metrics)
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert not [k for k in client.get_run(off.run_id).data.metrics if k.startswith("system/")]


@pytest.mark.parametrize(
    "exp_name, sweep, variant",
    [
        ("lr-grid-1", "lr-grid", None),
        ("lr-grid-12", "lr-grid", None),
        ("cnn-fast-cmp.batch_norm", "cnn-fast-cmp", "batch_norm"),  # appliedtorch.recipes
        ("v1.2.recipe", "v1.2", "recipe"),
        ("lr-0.01", None, None),  # a dot in a value is no variant
        ("bs-1.5-2", "bs-1.5", None),
        ("curly-bass", None, None),
        (None, None, None),
    ],
)
def test_sweep_is_the_name_of_a_queued_grid(exp_name, sweep, variant):
    from appliedtorch.tracking import sweep_name, variant_name

    assert sweep_name(exp_name) == sweep
    assert variant_name(exp_name) == variant
