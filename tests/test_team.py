"""A team's real setup: two clones sharing one MLflow server and one S3 DVC remote.

The servers run for real on 127.0.0.1 (tests/helpers/servers.py): PostgreSQL behind `mlflow server`,
which keeps artifacts in an S3 bucket on moto's standalone server; the DVC remote is another
prefix of that S3 store. The commands are the ones README's "Team setup" section shows.

Clone A (download@mnist + train_mlp, tiny params) runs `dvc repro` logging to the server and
`dvc push`es; clone B is a `git clone` of A that `dvc pull`s, finds nothing to run, predicts with
A's registered champion loaded through the server, and adds an experiment beside A's run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from appliedtorch.data.loading import load_dataset
from helpers import REPO
from helpers.repo import mnist_mlp_stages
from helpers.servers import (
    S3_CREDENTIALS,
    missing_servers,
    postgres_cluster,
    s3_keys,
    s3_server,
    serve_mlflow,
)

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
BUCKET = "appliedtorch-team"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "appliedtorch-tests",
    "GIT_AUTHOR_EMAIL": "tests@appliedtorch.invalid",
    "GIT_COMMITTER_NAME": "appliedtorch-tests",
    "GIT_COMMITTER_EMAIL": "tests@appliedtorch.invalid",
}
TINY = {
    "device": "cpu",
    "data": {"source": "synthetic"},
    "mlp": {"epochs": 1, "train_limit": 600, "batch_size": 64},
}
SYNTHETIC_SIZES = {"mnist_train": 600, "mnist_test": 200, "cifar10_train": 100, "cifar10_test": 20}

# Skips only where a server binary or client library cannot be had; .ci/run installs them all.
MISSING = missing_servers()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"team servers: {MISSING}")


@pytest.fixture(scope="module")
def team_servers(tmp_path_factory: pytest.TempPathFactory):
    """PostgreSQL + S3 (moto) + `mlflow server` in front of them; yields (tracking URL, S3 URL)."""
    logs = tmp_path_factory.mktemp("team-server-logs")
    with (
        postgres_cluster(logs / "postgres.log") as db_uri,
        s3_server(logs / "s3.log", buckets=(BUCKET,)) as s3_url,
        serve_mlflow(
            db_uri.replace("postgresql://", "postgresql+psycopg://"),
            f"s3://{BUCKET}/mlflow-artifacts",
            logs / "mlflow.log",
            # Only the server holds the bucket's credentials; clients upload through it.
            env={**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_url},
        ) as tracking_url,
    ):
        yield tracking_url, s3_url


def sh(cmd: list[str], cwd: Path, env: dict[str, str], stdout_only: bool = False) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def clone_env(clone: Path, **extra: str) -> dict[str, str]:
    """The environment a team member's shell has: no test-only settings, the clone's own code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "DVC_"))}
    # Users' machines write bytecode next to the code; .dvcignore must keep it out of the hashes.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return {
        **env,
        **GIT_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(clone / "src"),  # each clone runs its own checkout of appliedtorch
        "DVC_NO_ANALYTICS": "1",
        **extra,
    }


def make_clone_a(ws: Path, tracking_url: str) -> None:
    """The project's MNIST stages with tiny params and the team's tracking server in params.yaml."""
    ws.mkdir()
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = mnist_mlp_stages(pipeline)
    # Registration is its own stage (after the outputs land); here for the MLP alone.
    register = pipeline["stages"]["register"]
    register["cmd"] = (
        "python stages/register.py --params params.yaml "
        "--classifier mlp reports/mlp/metrics.json models/mlp.pt"
    )
    register["deps"] = [d for d in register["deps"] if "cnn" not in d]
    register["params"] = [p for p in register["params"] if p != "cnn"]
    stages["register"] = register
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    params["data"]["synthetic"].update(SYNTHETIC_SIZES)
    params["tracking"] = {"uri": tracking_url, "register_models": True}
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in (".dvcignore", ".gitignore", "pyproject.toml"):
        shutil.copy(REPO / name, ws / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", ws / "src", ignore=ignore)
    (ws / "stages").mkdir()
    for stage in ("download.py", "datasets.py", "train.py", "register.py"):
        shutil.copy(REPO / "stages" / stage, ws / "stages" / stage)


@pytest.mark.slow
def test_two_clones_share_data_models_and_runs(tmp_path: Path, team_servers) -> None:
    tracking_url, s3_url = team_servers
    started = time.monotonic()
    a, b = tmp_path / "clone-a", tmp_path / "clone-b"
    env_a = repro_and_push_clone_a(a, tracking_url, s3_url)
    repro_a = time.monotonic() - started

    client = mlflow.MlflowClient(tracking_url)
    experiment = client.get_experiment_by_name("mnist-mlp")
    [run_a] = client.search_runs([experiment.experiment_id])
    assert run_a.info.status == "FINISHED" and run_a.data.tags["dvc.stage"] == "train_mlp"
    code_commit = sh(["git", "rev-parse", "HEAD~1"], a, env_a).strip()
    assert run_a.data.tags["git.commit"] == code_commit
    # The model went through the server into the bucket, not beside the client.
    stored = s3_keys(s3_url, BUCKET, "mlflow-artifacts/")
    assert any(k.endswith("MLmodel") for k in stored), stored
    assert any(k.endswith(f"{run_a.info.run_id}/artifacts/metrics.json") for k in stored), stored
    assert not (a / "mlartifacts").exists() and not (a / "mlflow.db").exists()
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert champion.run_id == run_a.info.run_id

    env_b = clone_and_pull_b(a, b, tmp_path)
    check_the_served_champion_predicts_like_the_pulled_file(b, env_b, tracking_url)

    # B's experiment lands in the same server experiment, beside A's run.
    out = sh([DVC, "exp", "run", "-n", "b-lr", "-S", "mlp.lr=0.003"], b, env_b)
    assert "Running stage 'train_mlp'" in out and "Running stage 'download" not in out, out
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.run_id for r in runs][0] == run_a.info.run_id and len(runs) == 2
    run_b = runs[1]
    assert run_b.info.status == "FINISHED"
    assert run_b.data.tags["dvc.exp_name"] == "b-lr" and run_b.data.params["mlp.lr"] == "0.003"
    assert run_b.data.tags["git.commit"] == sh(["git", "rev-parse", "HEAD"], a, env_a).strip()
    versions = client.search_model_versions("name='mnist-mlp'")
    assert {v.run_id for v in versions} == {run_a.info.run_id, run_b.info.run_id}

    elapsed = time.monotonic() - started
    print(f"two clones: A repro+push {repro_a:.1f} s, whole test {elapsed:.1f} s")


def repro_and_push_clone_a(a: Path, tracking_url: str, s3_url: str) -> dict:
    """Clone A, reproduced, committed and pushed to the S3 remote; its environment."""
    key, secret = S3_CREDENTIALS["AWS_ACCESS_KEY_ID"], S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    # Clone A: a repository with an S3 remote; its credentials in .dvc/config.local (git-ignored),
    # so no AWS variable reaches the stages: the MLflow client needs none.
    make_clone_a(a, tracking_url)
    env_a = clone_env(a)
    sh(["git", "init", "-q", "-b", "main"], a, env_a)
    sh([DVC, "init", "-q"], a, env_a)
    sh([DVC, "remote", "add", "-d", "storage", f"s3://{BUCKET}/dvc"], a, env_a)
    sh([DVC, "remote", "modify", "storage", "endpointurl", s3_url], a, env_a)
    sh([DVC, "remote", "modify", "--local", "storage", "access_key_id", key], a, env_a)
    sh([DVC, "remote", "modify", "--local", "storage", "secret_access_key", secret], a, env_a)
    sh(["git", "add", "-A"], a, env_a)
    sh(["git", "commit", "-qm", "MNIST stages, S3 remote, team tracking server"], a, env_a)
    out = sh([DVC, "repro"], a, env_a)
    assert "Running stage 'download@mnist'" in out and "Running stage 'train_mlp'" in out, out
    sh(["git", "add", "-A"], a, env_a)
    sh(["git", "commit", "-qm", "dvc repro"], a, env_a)
    tracked = sh(["git", "ls-files"], a, env_a).split()
    assert ".dvc/config" in tracked and ".dvc/config.local" not in tracked
    config = (a / ".dvc" / "config").read_text()
    assert s3_url in config and key not in config and secret not in config, config
    assert "access_key" not in config and "secret" not in config, config
    sh([DVC, "push"], a, env_a)
    assert s3_keys(s3_url, BUCKET, "dvc/"), "dvc push wrote nothing to the S3 remote"
    return env_a


def clone_and_pull_b(a: Path, b: Path, tmp_path: Path) -> dict:
    """Clone B pulls A's data and model and has nothing to reproduce; its environment."""
    # Clone B: a teammate. Credentials from the environment; the remote comes with git.
    env_b = clone_env(b, **S3_CREDENTIALS)
    sh(["git", "clone", "-q", str(a), str(b)], tmp_path, env_b)
    assert not (b / "models" / "mlp.pt").exists() and not (b / ".dvc" / "config.local").exists()
    sh([DVC, "pull"], b, env_b)
    assert (b / "models/mlp.pt").read_bytes() == (a / "models/mlp.pt").read_bytes()
    status = sh([DVC, "status"], b, env_b).strip()
    assert status.endswith("Data and pipelines are up to date."), status
    again = sh([DVC, "repro"], b, env_b)
    assert "Running stage" not in again, again
    return env_b


def check_the_served_champion_predicts_like_the_pulled_file(
    b: Path, env_b: dict, tracking_url: str
) -> None:
    """A's champion through the server, and clone B's pulled file, on one PNG digit."""
    # A's champion, loaded through the server, predicts what the pulled checkpoint predicts.
    from PIL import Image

    mnist = load_dataset("mnist", b / "data/raw/mnist")
    digit = b / "digit.png"
    Image.fromarray(mnist.test_images[0].squeeze(0).numpy()).save(digit)
    # `appliedtorch-predict`, run as a module so that it is clone B's code whatever the venv holds.
    predict = [sys.executable, "-m", "appliedtorch.classify.inference.predict"]
    env_predict = {**env_b, "MLFLOW_TRACKING_URI": tracking_url}
    champion_uri = "models:/mnist-mlp@champion"
    from_server = sh([*predict, "--model", champion_uri, str(digit)], b, env_predict, True)
    from_file = sh([*predict, "--model", "models/mlp.pt", str(digit)], b, env_b, True)
    path, label, prob = from_server.strip().split("\t")
    _, file_label, file_prob = from_file.strip().split("\t")
    assert path == str(digit) and label in mnist.classes, from_server
    assert (label, float(prob)) == (file_label, pytest.approx(float(file_prob), abs=1e-4))
