"""Reliability: kill and resume, divergence, a dead tracking server, reproducible stages.

The stage-level tests run the real stage scripts as subprocesses; a real SIGKILL interrupts one.
Timing values (`*_seconds`, `seconds`) are the only ones allowed to differ between runs
(docs/architecture.md, "How a stage is written").
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from appliedtorch.classify.params import MLPParams
from appliedtorch.classify.runs.resume import ResumeState, fingerprint, resume_path
from appliedtorch.classify.training.loop import train_classifier
from appliedtorch.core.errors import TrackingError
from appliedtorch.data.download.fetch import download
from appliedtorch.tracking import resolve_tracking_uri
from helpers import REPO, merge
from helpers.data import make_data
from helpers.servers import silent_server
from helpers.stage_runs import stage_script

# Small, but every stage does all of its work (the CNN: dropout, augmentation and a StepLR drop).
SMALL = {
    "device": "cpu",
    "data": {
        "source": "synthetic",
        "synthetic": {
            "mnist_train": 300,
            "mnist_test": 100,
            "cifar10_train": 600,
            "cifar10_test": 100,
        },
    },
    "mlp": {"epochs": 2, "train_limit": 300},
    # bf16 set, not `auto`: auto is timed, and two runs on a busy machine may time it otherwise
    "cnn": {
        "epochs": 4,
        "batch_size": 32,
        "train_limit": 512,
        "step_size": 2,
        "gamma": 0.5,
        "bf16": False,
    },
    "pinn": {
        "boundary": "hard",
        "collocation_points": 200,
        "resample_every": 50,
        "adam_steps": 150,
        "lbfgs_steps": 40,
        "lm_steps": 80,
    },
    "math": {"gd_steps": 500},
}


def is_timing(key: str) -> bool:
    return key == "seconds" or key.endswith("_seconds")


def without_timings(obj: object) -> object:
    """metrics.json content with the timing values (the only ones allowed to vary) left out."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not is_timing(str(k))}
    return obj


def metrics(reports: Path) -> dict:
    """metrics.json with the stage's details file beside it (per_class, phases, demos)."""
    out = json.loads((reports / "metrics.json").read_text())
    for details in ("per_class.json", "phases.json", "demos.json"):
        if (reports / details).exists():
            out |= json.loads((reports / details).read_text())
    return out


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path) -> Path:
    """params.yaml (SMALL), synthetic data/raw/{mnist,cifar10}, and a template tracking DB."""
    ws = tmp_path_factory.mktemp("reliability")
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), SMALL)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sizes = SMALL["data"]["synthetic"]
    for name in ("mnist", "cifar10"):
        download(name, ws / "data" / "raw" / name, "synthetic", synthetic_sizes=(
            sizes[f"{name}_train"], sizes[f"{name}_test"]))  # fmt: skip
    shutil.copy(mlflow_template_db, ws / "template.db")
    return ws


def stage_cmd(ws: Path, stage: str, out: Path) -> list[str]:
    """The stage's command line as dvc.yaml has it, with outputs under `out`."""
    args = {
        "download": ["--dataset", "mnist", "--out", out / "data/raw/mnist"],
        "math_demos": ["--reports", out / "reports/math"],
        "pinn": ["--model", out / "models/pinn.pt", "--reports", out / "reports/pinn"],
        "train_mlp": ["--data", ws / "data/raw/mnist", "--model", out / "models/mlp.pt",
                      "--reports", out / "reports/mlp"],
        "train_cnn": ["--data", ws / "data/raw/cifar10", "--model", out / "models/cnn.pt",
                      "--reports", out / "reports/cnn"],
    }[stage]  # fmt: skip
    script, picks = stage_script(stage)
    return [sys.executable, str(script), *picks, "--params", str(ws / "params.yaml")] + [
        str(a) for a in args
    ]


def start(ws: Path, stage: str, out: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a stage in its own directory `out`, tracking into its own copy of the template DB."""
    out.mkdir(parents=True, exist_ok=True)
    db = out / "mlflow.db"
    if not db.exists():
        shutil.copy(ws / "template.db", db)
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", **(env or {})}
    return subprocess.Popen(
        stage_cmd(ws, stage, out),
        cwd=out,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return err


def run_pair(ws: Path, stage: str, root: Path) -> tuple[Path, Path]:
    """Two runs of `stage` with the same params and seed, side by side (one per core)."""
    a, b = root / "a", root / "b"
    procs = [start(ws, stage, a), start(ws, stage, b)]
    for p in procs:
        finish(p)
    return a, b


@pytest.fixture(scope="module")
def cnn_reference(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two uninterrupted train_cnn runs: the reproducibility pair and the resume test's reference."""
    return run_pair(workspace, "train_cnn", tmp_path_factory.mktemp("cnn"))


# ---- 5. reproducibility: every stage, two processes, same params and seed ----------------------

OUTPUTS = {
    # stage: (metrics.json directory, model file) relative to the run's directory
    "math_demos": ("reports/math", None),
    "pinn": ("reports/pinn", "models/pinn.pt"),
    "train_mlp": ("reports/mlp", "models/mlp.pt"),
    "train_cnn": ("reports/cnn", "models/cnn.pt"),
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["download", *OUTPUTS])
def test_two_runs_give_identical_metrics_and_model_files(stage, workspace, cnn_reference, tmp_path):
    a, b = cnn_reference if stage == "train_cnn" else run_pair(workspace, stage, tmp_path)
    if stage == "download":
        files = tree(a / "data/raw/mnist")
        assert "source.json" in files and len(files) == 5
        assert files == tree(b / "data/raw/mnist")  # every file, byte for byte
        return
    reports, model = OUTPUTS[stage]
    ma, mb = metrics(a / reports), metrics(b / reports)
    assert without_timings(ma) == without_timings(mb)
    assert len(without_timings(ma)) >= 5  # a real comparison, not of two empty files
    if model:
        # Byte-identical files (torch.save once named the zip's folder after the random temp file).
        assert (a / model).read_bytes() == (b / model).read_bytes()
        assert not resume_path(a / model).exists()  # deleted after the successful run


# ---- 2. kill and resume ---------------------------------------------------------------------


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_same_model_and_metrics(
    workspace, cnn_reference, tmp_path
):
    reference = cnn_reference[0]
    out = tmp_path / "killed"
    model = out / "models/cnn.pt"
    resume = resume_path(model)
    proc = start(workspace, "train_cnn", out)
    deadline = time.monotonic() + 240
    while not resume.exists():  # the first epoch's resume state: kill right after it appears
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no resume state appeared"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = torch.load(resume, weights_only=True)["epoch"]
    assert 1 <= done < SMALL["cnn"]["epochs"], done  # killed mid-training
    assert not model.exists() and not (out / "reports/cnn/metrics.json").exists()

    err = finish(start(workspace, "train_cnn", out))
    assert f"resuming from {resume}: {done} epoch(s) done" in err, err[-3000:]
    assert f"epoch {done}: train loss" not in err and f"epoch {done + 1}: train loss" in err
    assert model.read_bytes() == (reference / "models/cnn.pt").read_bytes()  # bitwise
    assert without_timings(metrics(out / "reports/cnn")) == without_timings(
        metrics(reference / "reports/cnn")
    )
    assert not resume.exists() and not list(resume.parent.glob("*.tmp"))

    # The MLflow run continued: one run, FINISHED, with every epoch's metrics.
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cifar10-cnn").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")}
    assert steps == {1, 2, 3, 4}
    assert run.data.metrics["test_accuracy"] == metrics(out / "reports/cnn")["test_accuracy"]


MLP = MLPParams(epochs=3, batch_size=64, lr=1e-3, threads=1)


class Stop(Exception):
    """Stands in for a kill in the in-process tests."""


def interrupted(data, config, resume: ResumeState, at_epoch: int) -> None:
    """Train until the callback of `at_epoch` runs (its resume state is not yet written), then stop."""

    def stop(stats):
        if stats.epoch == at_epoch:
            raise Stop

    with pytest.raises(Stop):
        train_classifier(data, config, callback=stop, resume=resume)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("at_epoch", [2, None], ids=["mid-training", "after-the-last-epoch"])
def test_resume_in_process_is_bitwise(at_epoch, tmp_path):
    """The MLP path (no scheduler), including a kill after the last epoch's resume state."""
    data = make_data("mnist", 640, 200)
    full = train_classifier(data, MLP)
    path = tmp_path / ".mlp.resume"
    if at_epoch:
        interrupted(data, MLP, ResumeState(path, "fp"), at_epoch)
    else:
        train_classifier(data, MLP, resume=ResumeState(path, "fp"))
    torch.manual_seed(1234)  # a fresh process would not have the interrupted run's RNG state
    resume = ResumeState.open(path, "fp")
    assert resume.epochs_done == (at_epoch - 1 if at_epoch else MLP.epochs)
    resumed = train_classifier(data, MLP, resume=resume)
    assert same_weights(resumed.model, full.model)
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in full.history]
    assert resumed.evaluation.loss == full.evaluation.loss
    assert torch.equal(resumed.evaluation.predictions, full.evaluation.predictions)


def test_resume_state_from_other_params_is_reported_and_not_resumed(tmp_path, caplog):
    data = make_data("mnist", 256, 64)
    path = tmp_path / ".mlp.resume"
    old = fingerprint({"mlp.lr": 0.001, "seed": 42})
    interrupted(data, MLP.model_copy(update=dict(lr=0.01)), ResumeState(path, old), at_epoch=3)
    (path.parent / f".{path.name}.abc123.tmp").write_bytes(b"half a state")  # a kill mid-save
    (tmp_path / ".mlp.ckpt").write_bytes(b"a resume state under the name before the rename")

    new = fingerprint({"mlp.lr": 0.002, "seed": 42})
    assert new != old
    resume = ResumeState.open(path, new)
    assert resume.saved is None and resume.run_id is None
    assert "ignoring resume state" in caplog.text and "other params or data" in caplog.text
    assert not list(tmp_path.glob("*.tmp"))  # the stale temporary file is gone
    assert not (tmp_path / ".mlp.ckpt").exists()  # so is the file under the old name
    fresh = train_classifier(data, MLP.model_copy(update=dict(lr=0.002, epochs=1)), resume=resume)
    scratch = train_classifier(data, MLP.model_copy(update=dict(lr=0.002, epochs=1)))
    assert same_weights(fresh.model, scratch.model)  # trained from scratch, not from the old state
    assert torch.load(path, weights_only=True)["fingerprint"] == new  # replaced

    path.write_bytes(b"not a resume state")
    assert ResumeState.open(path, new).saved is None
    assert "ignoring unreadable resume state" in caplog.text


def test_resume_state_from_another_number_of_processes_is_reported_and_not_resumed(
    tmp_path, caplog
):
    data = make_data("mnist", 256, 64)
    path = tmp_path / ".mlp.resume"
    interrupted(data, MLP, ResumeState(path, "fp"), at_epoch=2)
    state = torch.load(path, weights_only=True)
    assert state["world_size"] == 1 and len(state["rng"]) == 1
    # As a 2-process torchrun run writes it: same params and data, one set of streams per rank.
    torch.save({**state, "world_size": 2, "rng": state["rng"] * 2}, path)
    resume = ResumeState.open(path, "fp")
    assert resume.saved is None and resume.run_id is None
    assert "written by 2 process(es), this run has 1" in caplog.text


# ---- 3. divergence ----------------------------------------------------------------------------


@pytest.mark.slow
def test_diverging_stage_stops_in_epoch_one_fails_the_run_and_writes_nothing(workspace, tmp_path):
    ws = tmp_path / "ws"
    params = merge(yaml.safe_load((workspace / "params.yaml").read_text()), {"mlp": {"lr": 1e20}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = stage_cmd(workspace, "train_mlp", ws)
    cmd[cmd.index("--params") + 1] = str(tmp_path / "params.yaml")
    ws.mkdir()
    shutil.copy(workspace / "template.db", ws / "mlflow.db")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{ws / 'mlflow.db'}"}
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith("error: training diverged: loss became nan at epoch 1, step 2 ")
    assert "(lr 1e+20); lower mlp.lr in params.yaml" in errors[0]
    assert "epoch 1: train loss" not in proc.stderr  # stopped inside the first epoch
    assert not (ws / "models").exists() and not (ws / "reports").exists()
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert run.info.status == "FAILED"


# ---- 4. a dead tracking server ------------------------------------------------------------------


@pytest.mark.slow
def test_hung_tracking_server_fails_the_stage_within_30_s_before_training(workspace, tmp_path):
    with silent_server() as uri:
        start_time = time.monotonic()
        proc = start(workspace, "train_mlp", tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        _, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - start_time
    print(f"dead tracking server reported after {elapsed:.1f} s (interpreter start included)")
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: MLflow tracking server {uri} is not reachable (timed out)")
    assert "Traceback" not in err and "epoch 1" not in err  # before any training
    assert elapsed < 30, elapsed
    assert not (tmp_path / "models").exists() and not (tmp_path / "reports").exists()


MALFORMED = [
    ("http://127.0.0.1:port5000", "has an invalid port"),
    ("http://", "has no host"),
    ("htp://localhost:5000", "has an unknown scheme 'htp'"),
    ("sqlite://", "is not sqlite:///<path to the database file>"),
    ("sqlite:/mlflow.db", "is not sqlite:///<path to the database file>"),
    ("not a uri", "is a plain path (MLflow 3 refuses its file store)"),
]


@pytest.mark.parametrize(("uri", "problem"), MALFORMED)
def test_malformed_tracking_uri_is_one_line_naming_it(uri, problem, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(TrackingError) as info:
        resolve_tracking_uri(uri)
    assert str(info.value).startswith(f"tracking URI '{uri}' {problem}; set tracking.uri to ")


def test_wellformed_tracking_uris_pass(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for uri in (
        "http://127.0.0.1:5000",
        "https://mlflow.example.com",
        "postgresql+psycopg://u@h/db",
    ):
        assert resolve_tracking_uri(uri) == uri
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == f"sqlite:///{tmp_path}/x.db"


@pytest.fixture
def global_uri_reset():
    """stage_run in-process sets MLflow's global URI, which outlives the test and would win over
    the MLFLOW_TRACKING_URI of later tests; forget it (set_tracking_uri(None) also unsets the
    variable, so put the test's value back for monkeypatch to restore)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(None)
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


def test_stage_run_continues_a_run_or_links_to_it(tracking_uri, caplog, global_uri_reset):
    from appliedtorch.tracking import stage_run

    with stage_run("unit-resume", "train_mlp", {"seed": 1}) as first:
        first.log_metrics({"train_loss": 1.0}, step=1)
        interrupted_id = first.run_id
    with stage_run("unit-resume", "train_mlp", {"seed": 1}, resume_run_id=interrupted_id) as again:
        again.log_metrics({"train_loss": 0.5}, step=2)
    assert again.run_id == interrupted_id
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(interrupted_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert [m.step for m in client.get_metric_history(interrupted_id, "train_loss")] == [1, 2]

    gone = "0" * 32  # e.g. the resume state came from another tracking store
    with stage_run("unit-resume", "train_mlp", {"seed": 1}, resume_run_id=gone) as linked:
        pass
    assert linked.run_id != gone and f"cannot continue MLflow run {gone}" in caplog.text
    assert client.get_run(linked.run_id).data.tags["resumed_from"] == gone


# ---- signals: SIGTERM and SIGINT end a stage the same way ---------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code", "line"), [
    (signal.SIGTERM, 143, "error: terminated (SIGTERM)"),
    (signal.SIGINT, 130, "error: interrupted (SIGINT)"),
])  # fmt: skip
def test_signalled_training_is_one_line_and_ends_its_mlflow_run(
    sig, code, line, workspace, tmp_path
):
    """What `timeout`, `docker stop` and CI cancellation send: one line, 128 + signal, the
    MLflow run ended KILLED (not RUNNING for ever), no temporary files."""
    params = merge(yaml.safe_load((workspace / "params.yaml").read_text()),
                   {"mlp": {"epochs": 1000, "train_limit": 64}})  # fmt: skip
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copytree(workspace / "data", ws / "data")
    shutil.copy(workspace / "template.db", ws / "template.db")
    out = tmp_path / "out"
    proc = start(ws, "train_mlp", out)
    ckpt = resume_path(out / "models/mlp.pt")
    deadline = time.monotonic() + 240
    while not ckpt.exists():  # training is under way, inside the MLflow run
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    sent = time.monotonic()
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err
    assert [e for e in err.splitlines() if e.startswith("error:")] == [line]
    assert err.strip().splitlines()[-1] == line
    # A hang guard, not a speed check: ~5 s on a quiet machine (Python and MLflow shutting
    # down), 23 s seen during a full test run on the 2 cores.
    assert took < 45, took
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert run.info.status == "KILLED"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "models/mlp.pt").exists() and not (out / "reports/mlp/metrics.json").exists()


def test_a_resumed_run_keeps_the_choice_auto_made(tmp_path, monkeypatch):
    """A choice timed on a busy machine is not cached: the resumed run must not time again (it
    could choose otherwise and end with other numbers than an uninterrupted run)."""
    from appliedtorch.classify.training import tuning
    from appliedtorch.machine import autotune

    probes = []

    def fake(question, candidates, **kwargs):
        probes.append(sorted(candidates))
        choice = sorted(candidates)[len(probes) % 2]  # another choice at every probe
        return autotune.Tuned(choice, dict.fromkeys(candidates, 0.1), 0.5, False)

    monkeypatch.setattr(tuning, "native_bf16", lambda device: True)
    monkeypatch.setattr(tuning, "pick_fastest", fake)
    monkeypatch.setattr(tuning, "PROBE_SHARE", float("inf"))  # a short run probes too
    section = MLP.model_copy(update={"bf16": "auto"})
    data = make_data("mnist", 256, 64)
    path = tmp_path / ".mlp.resume"
    interrupted(data, section, ResumeState(path, "fp"), at_epoch=3)
    chosen = ResumeState.open(path, "fp").tuning
    assert len(probes) == 1 and chosen["probe"]["choice"] in probes[0]
    resumed = train_classifier(data, section, resume=ResumeState.open(path, "fp"))
    assert len(probes) == 1, "the resumed run timed the candidates again"
    assert resumed.tuning.as_record() == chosen
    assert (
        resumed.tuning.record()["autotune"]
        == tuning.Tuning.from_record(chosen).record()["autotune"]
    )
