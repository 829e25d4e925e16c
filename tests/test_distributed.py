"""Distributed training: the sharding arithmetic, and 2 processes (torchrun, gloo, CPU) giving the
same results as one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from functools import cache
from pathlib import Path

import pytest
import torch

from appliedtorch.classify.params import CNNParams, MLPParams
from appliedtorch.classify.runs.distributed import SINGLE, World
from appliedtorch.classify.runs.resume import resume_path
from appliedtorch.classify.training.batches import Batches, Normalizer
from appliedtorch.classify.training.loop import train_classifier
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.data.download.fetch import download
from appliedtorch.data.loading import ImageData, load_dataset, synthetic_in_memory
from appliedtorch.params import load_params
from helpers import PYTHON, REPO

SIZES = {"mnist": (1024, 300), "cifar10": (256, 100)}
# Sample counts divisible by the global batch: no padding, no short batch, so two processes
# with half batches average to exactly the one-process gradients (up to float sum order).
# The CNN runs without augmentation or dropout, whose random streams are per process.
# Batch norm: both processes evaluate (three test batches, dealt in turn) with rank 0's
# running statistics, as its saved model has them; with one test batch, process 1 has none
# (DDP's buffer broadcast in an evaluating forward would leave process 0 waiting).
MLP_BN = MLPParams(
    epochs=1, batch_size=64, lr=1e-3, batch_norm=True, threads=1, eval_batch_size=128
)
CONFIGS = {
    "mlp": (
        "mnist",
        MLPParams(epochs=2, batch_size=64, lr=1e-3, threads=1),
    ),
    "cnn": (
        "cifar10",
        CNNParams(
            epochs=1,
            batch_size=32,
            lr=2e-3,
            dropout=0.0,
            threads=1,
            channels_last=True,
            eval_batch_size=64,
            augment=False,
            bf16=False,
        ),
    ),
    "mlp_bn": ("mnist", MLP_BN),
    "mlp_bn_one_test_batch": ("mnist", MLP_BN.model_copy(update=dict(eval_batch_size=512))),
    # 250 samples: the shards are padded and the last batch is short; with augmentation.
    "cnn_uneven": (
        "cifar10_250",
        CNNParams(
            epochs=2,
            batch_size=32,
            lr=2e-3,
            augment=True,
            threads=1,
            channels_last=True,
            eval_batch_size=48,
            bf16=False,
        ),
    ),
}


@cache
def make_data(name: str) -> ImageData:
    """Tiny synthetic data in memory ('cifar10_250': 250 training images)."""
    base, _, n = name.partition("_")
    n_train, n_test = SIZES[base]
    return synthetic_in_memory(base, int(n or n_train), n_test)


TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(*args: object, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 ...` with this interpreter (it picks a free port)."""
    return subprocess.run(
        [*TORCHRUN, *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ---- arithmetic, no processes -------------------------------------------------------------------


def test_single_world_changes_nothing():
    perm = torch.randperm(10)
    assert SINGLE.shard(perm) is perm and SINGLE.shard_size(10) == 10
    assert SINGLE.sum(3.0, 2) == (3.0, 2) and SINGLE.max(1.5) == (1.5,)
    assert SINGLE.any(True) and not SINGLE.any(False)
    assert SINGLE.all_gather(perm)[0] is perm
    x, y = torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10)
    batches = Batches(x, y, 4, Normalizer((0.5,), (0.5,)))
    assert batches.rows is None and len(batches) == 3
    assert [labels.tolist() for _, labels in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_shards_split_every_global_batch_between_the_ranks():
    n, size, batch = 10, 3, 6  # 10 samples padded to 12; global batch 6 = 3 ranks x 2
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shards = [World(size=size, rank=r).shard(perm) for r in range(size)]
    assert [len(s) for s in shards] == [4, 4, 4]
    padded = torch.cat([perm, perm[:2]])
    assert sorted(torch.cat(shards).tolist()) == sorted(padded.tolist())
    local = batch // size
    for k in range(2):  # step k of every rank together is global batch k
        step = torch.cat([s[k * local : (k + 1) * local] for s in shards])
        assert sorted(step.tolist()) == sorted(padded[k * batch : (k + 1) * batch].tolist())


def test_evaluation_parts_are_whole_one_process_batches():
    world = World(size=2)
    assert world.strided_batches(10, 4, 0).tolist() == [0, 1, 2, 3, 8, 9]
    assert world.strided_batches(10, 4, 1).tolist() == [4, 5, 6, 7]
    assert World(size=4).strided_batches(5, 4, 3).tolist() == []
    # A process's in-order batches are whole one-process batches.
    x, y = torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10)
    part = Batches(x, y, 4, Normalizer((0.5,), (0.5,)), world=World(size=2, rank=0))
    assert [labels.tolist() for _, labels in part] == [[0, 1, 2, 3], [8, 9]]


def test_batch_size_not_divisible_by_the_processes_is_one_clear_error():
    data = make_data("mnist")
    config = MLPParams(epochs=1, batch_size=64, lr=1e-3)
    with pytest.raises(
        AppliedTorchError, match=r"mlp.batch_size \(64\) must be divisible .* \(3\)"
    ):
        train_classifier(data, config, world=World(size=3))


# ---- two processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    jobs, out = tmp_path / "jobs.pt", tmp_path / "out.json"
    torch.save({name: (make_data(d), config) for name, (d, config) in CONFIGS.items()}, jobs)
    proc = torchrun(REPO / "tests" / "ddp_worker.py", jobs, out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world_size"] == 2
    for name in ("mlp", "cnn"):
        dataset, config = CONFIGS[name]
        one = train_classifier(make_data(dataset), config)
        two = got[name]["history"]
        assert len(two) == len(one.history) == config.epochs
        for a, b in zip(one.history, two, strict=True):
            for key in ("train_loss", "test_loss"):
                assert b[key] == pytest.approx(getattr(a, key), rel=1e-3), (name, key)
            assert abs(b["test_accuracy"] - a.test_accuracy) <= 0.02, name
        agree = (torch.tensor(got[name]["predictions"]) == one.evaluation.predictions).float()
        assert agree.mean() >= 0.97, name
    # Padded shards, a short last batch and per-process augmentation: it runs and learns.
    uneven = got["cnn_uneven"]["history"]
    assert len(uneven) == 2 and uneven[1]["train_loss"] < uneven[0]["train_loss"]
    assert uneven[-1]["test_loss"] < 2.2  # chance: ln 10 = 2.30
    assert len(got["cnn_uneven"]["predictions"]) == SIZES["cifar10"][1]
    # Batch norm: finished, and the evaluation is rank 0's model's, whoever evaluated each part.
    for name in ("mlp_bn", "mlp_bn_one_test_batch"):
        assert got[name]["same_as_rank0_model"] is True, name
        alone, combined = got[name]["rank0_model_loss"]
        assert combined == pytest.approx(alone, rel=1e-9, abs=0), name
        assert len(got[name]["predictions"]) == SIZES["mnist"][1]


@pytest.mark.slow
def test_train_mlp_stage_under_torchrun(tmp_path, tracking_uri, params_file):
    data_dir = tmp_path / "data" / "raw" / "mnist"
    download(
        "mnist",
        data_dir,
        source="synthetic",
        synthetic_sizes=(1024, 256),
    )
    params = params_file({"device": "cpu", "mlp": {"epochs": 2, "train_limit": 1024}})
    model, reports = tmp_path / "models" / "mlp.pt", tmp_path / "reports" / "mlp"
    proc = torchrun(
        REPO / "stages" / "train.py", "--section", "mlp",
        "--params", params, "--data", data_dir, "--model", model, "--reports", reports,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("epoch 2: train loss") == 1  # rank 1 logs warnings only

    p = load_params(params)
    one = train_classifier(load_dataset("mnist", data_dir), p.mlp, seed=p.seed, device="cpu")
    metrics = json.loads((reports / "metrics.json").read_text())
    metrics |= json.loads((reports / "details.json").read_text())
    assert metrics["test_loss"] == pytest.approx(one.evaluation.loss, rel=1e-3)
    assert abs(metrics["test_accuracy"] - one.evaluation.accuracy) <= 0.02
    assert metrics["train_samples"] == 1024 and model.exists()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist-mlp").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["distributed.world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]


def children(pid: int) -> list[int]:
    """The processes `pid` started (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.slow
def test_sigkilled_torchrun_training_resumes_to_the_same_model_and_run(
    tmp_path, mlflow_template_db, params_file
):
    """2 processes killed after an epoch: the rerun restores every rank's state (weights,
    optimizer, StepLR, the shared shuffle stream and each rank's own dropout, crop and flip
    streams) in the same MLflow run, and ends with the model file of an uninterrupted 2-process
    run, byte for byte. The CNN, not the MLP: the MLP draws from no per-rank stream."""
    data_dir = tmp_path / "data" / "raw" / "cifar10"
    download("cifar10", data_dir, source="synthetic", synthetic_sizes=(256, 128))
    epochs = 4
    cnn = {"epochs": epochs, "batch_size": 32, "train_limit": 256, "step_size": 2, "gamma": 0.5}
    # bf16 set, not `auto`: the reference and the resumed run would each time it, maybe otherwise
    cnn |= {"dropout": 0.5, "augment": True, "bf16": False}
    params = params_file({"device": "cpu", "cnn": cnn})

    def start(name: str) -> subprocess.Popen:
        return start_torchrun(tmp_path / name, params, data_dir, mlflow_template_db)

    # The uninterrupted reference runs beside the run that is killed and resumed.
    reference_proc, proc = start("reference"), start("killed")
    out, reference = tmp_path / "killed", tmp_path / "reference"
    resume = resume_path(out / "models/cnn.pt")
    state = kill_when_it_appears(proc, resume)
    done = state["epoch"]
    assert 1 <= done < epochs and state["world_size"] == 2 and len(state["rng"]) == 2, done
    assert not (out / "models/cnn.pt").exists()

    err = finish(start("killed"))  # the same command again
    assert f"resuming from {resume}: {done} epoch(s) done" in err, err[-3000:]
    assert f"epoch {done}: train loss" not in err and f"epoch {done + 1}: train loss" in err
    finish(reference_proc)
    model = out / "models/cnn.pt"
    assert model.read_bytes() == (reference / "models/cnn.pt").read_bytes()  # bitwise
    assert without_timings(out / "reports/cnn/metrics.json") == without_timings(
        reference / "reports/cnn/metrics.json"
    )
    assert not resume.exists() and not list(resume.parent.glob("*.tmp"))
    check_one_continued_run(f"sqlite:///{out / 'mlflow.db'}", state["run_id"], epochs)


def start_torchrun(out: Path, params: Path, data_dir: Path, template_db: Path) -> subprocess.Popen:
    """The CNN stage under torchrun (2 processes) with its outputs and mlflow.db in `out`."""
    out.mkdir(exist_ok=True)
    if not (out / "mlflow.db").exists():
        (out / "mlflow.db").write_bytes(template_db.read_bytes())
    cmd = [*TORCHRUN, REPO / "stages" / "train.py", "--section", "cnn", "--params", params, "--data",
           data_dir, "--model", out / "models/cnn.pt", "--reports", out / "reports/cnn"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}"}
    return subprocess.Popen(
        [str(a) for a in cmd], cwd=out, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    """Wait for `proc`; it must succeed; its stderr."""
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return err


def kill_when_it_appears(proc: subprocess.Popen, resume: Path) -> dict:
    """SIGKILL torchrun and its 2 workers right after the first epoch's resume state appears;
    the state they left."""
    deadline = time.monotonic() + 240
    while not resume.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no resume state appeared"
        time.sleep(0.005)
    workers = children(proc.pid)
    for pid in (proc.pid, *workers):  # torchrun starts each worker in its own session
        os.killpg(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert len(workers) == 2 and proc.returncode == -signal.SIGKILL
    return torch.load(resume, weights_only=True)


def without_timings(path: Path) -> dict:
    """A metrics.json without the values allowed to differ between runs (`*seconds`)."""
    metrics = json.loads(path.read_text())
    return {k: v for k, v in metrics.items() if not (k == "seconds" or k.endswith("_seconds"))}


def check_one_continued_run(uri: str, run_id: str, epochs: int) -> None:
    """One MLflow run, continued: FINISHED, with every epoch's metrics once."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cifar10-cnn").experiment_id])
    assert run.info.run_id == run_id
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert run.data.tags["distributed.world_size"] == "2"
    for key in ("train_loss", "test_accuracy", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, epochs + 1)), key
