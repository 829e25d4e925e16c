"""A sweep on a two-node Ray cluster: 2 variants × 3 seeds of a tiny MLP, one DVC experiment and
one MLflow child run per point, a node killed mid-sweep, a rerun, a run reproduced.

Both nodes, the MLflow server and the driver run inside a network namespace with only `lo`
(tests/helpers/cluster.py), so no traffic leaves loopback; the git remote is a bare repository
and the DVC remote a directory. Needs root (unshare -n): CI runs as root; elsewhere these skip.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from helpers import BIN, PYTHON, merge
from helpers.cluster import Namespace, descendants_running, environ_of, why_no_namespace
from helpers.repo import SHRUNK, make_workspace, mnist_mlp_stages, run

pytestmark = pytest.mark.slow

TINY = merge(
    SHRUNK,
    {
        "mlp": {"epochs": 1, "train_limit": 300},
        "tracking": {"system_metrics": False},  # its monitor takes seconds to stop
    },
)
SWEEP = "tiny"
NAMES = sorted(f"{SWEEP}-{v}-s{s}" for v in ("baseline", "fast") for s in (42, 43, 44))
COMMAND = ["run", SWEEP, "--variant", "fast", "mlp.lr=0.01", "--seeds", "3", "--stage", "train_mlp"]


def sweep_argv(address: str, clones: Path, *args: str) -> list[str]:
    """The sweep command, run by the driver in the namespace."""
    return [
        PYTHON,
        "-m",
        "appliedtorch.sweep",
        *args,
        "--address",
        address,
        "--clones",
        str(clones),
    ]


def published_workspace(tmp: Path) -> tuple[Path, dict]:
    """The project with TINY params, its data pushed to a directory DVC remote and its commit
    to a bare git remote; only the stages the sweep needs."""
    ws, env = make_workspace(tmp, TINY, tracking_uri="unused")
    pipeline = yaml.safe_load((ws / "dvc.yaml").read_text())
    stages = mnist_mlp_stages(pipeline)  # every output in dvc.lock: exp apply
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q", "--bare", str(tmp / "git-remote")], tmp, env)
    run(["git", "remote", "add", "origin", str(tmp / "git-remote")], ws, env)
    run([dvc, "remote", "add", "-d", "store", str(tmp / "dvc-remote")], ws, env)
    run([dvc, "repro", "download@mnist"], ws, env)
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "data and remotes"], ws, env)
    run([dvc, "push", "-q"], ws, env)
    run(["git", "push", "-q", "origin", "main"], ws, env)
    return ws, env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The workspace, the namespace, its MLflow server and two Ray nodes, for the module."""
    if reason := why_no_namespace():
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the cluster tests: {reason}")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("sweep-cluster")
    ws, env = published_workspace(tmp)
    ns = Namespace().__enter__()
    try:
        db = tmp / "mlflow.db"
        with ns.mlflow_server(db, tmp / "artifacts", tmp / "mlflow.log") as uri:
            # Ray's token authentication, with a token of the test's own (not ~/.ray's).
            token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
            env = {**env, **token, "MLFLOW_TRACKING_URI": uri}
            with ns.ray_nodes(2, tmp, env) as nodes:
                yield {"ws": ws, "env": env, "ns": ns, "nodes": nodes, "db": db, "tmp": tmp}
    finally:
        ns.__exit__(None, None, None)


def sweep(cluster: dict, *args: str) -> subprocess.CompletedProcess:
    """Run the sweep command to its end in the namespace."""
    argv = sweep_argv(cluster["nodes"].address, cluster["tmp"] / "clones", *args)
    return subprocess.run(
        cluster["ns"].argv(argv),
        cwd=cluster["ws"],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def runs(db: Path) -> list:
    """Every MLflow run in the server's database."""
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def kill_second_node_while_training(
    cluster: dict, driver: subprocess.Popen, log: Path, after: int = 2
) -> str:
    """Once `after` points finished and node 1 trains one whose MLflow run has begun, kill the
    node; the point's name. (Late, so that the two nodes share most of the sweep.)"""
    node = cluster["nodes"].procs[1]
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and driver.poll() is None:
        if len(re.findall(r"\bnode 127", log.read_text())) < after:
            time.sleep(0.5)
            continue
        # stages/train_mlp.py, or stages/train.py --section mlp
        for pid in descendants_running(node.pid, "stages/train"):
            name = environ_of(pid).get("DVC_EXP_NAME", "")
            named = [r for r in runs(cluster["db"]) if r.data.tags.get("dvc.exp_name") == name]
            if name and any(r.info.status == "RUNNING" for r in named):
                cluster["nodes"].kill(1)
                return name
        time.sleep(0.5)
    raise AssertionError("node 1 never trained a point")


@pytest.fixture(scope="module")
def swept(cluster):
    """The sweep, with node 1 killed while it trains; (stdout, the killed point's name)."""
    argv = sweep_argv(cluster["nodes"].address, cluster["tmp"] / "clones", *COMMAND)
    log = cluster["tmp"] / "sweep.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            cluster["ns"].argv(argv),
            cwd=cluster["ws"],
            env=cluster["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            killed = kill_second_node_while_training(cluster, driver, log)
            assert driver.wait(timeout=900) == 0, log.read_text()[-5000:]
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    return log.read_text(), killed


def sweep_runs(db: Path) -> tuple[object, list, list]:
    """(the parent run, its children, the other runs of the sweep's experiments)."""
    everything = runs(db)
    parents = [r for r in everything if r.data.tags.get("sweep.role") == "parent"]
    assert len(parents) == 1, [r.data.tags for r in parents]
    parent = parents[0]
    children = [
        r for r in everything if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    others = [
        r
        for r in everything
        if r.data.tags.get("dvc.exp_name") in NAMES
        and r not in children
        and r.info.run_id not in {c.info.run_id for c in children}
    ]
    return parent, children, others


def test_six_points_are_six_experiments_in_dvc_exp_show(cluster, swept):
    out = run([str(BIN / "dvc"), "exp", "show", "--json"], cluster["ws"], cluster["env"]).stdout
    shown = {e["name"]: e for rev in json.loads(out) for e in rev.get("experiments") or []}
    assert sorted(n for n in shown if n.startswith(f"{SWEEP}-")) == NAMES
    lrs = {
        n: shown[n]["revs"][0]["data"]["params"]["params.yaml"]["data"]["mlp"]["lr"] for n in NAMES
    }
    assert {n: lr for n, lr in lrs.items()} == {n: 0.01 if "-fast-" in n else 0.001 for n in NAMES}


def test_one_parent_run_has_the_six_finished_runs_as_children(cluster, swept):
    parent, children, _ = sweep_runs(cluster["db"])
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.tags["dvc.exp_name"] for r in children) == NAMES
    commit = run(["git", "rev-parse", "HEAD"], cluster["ws"], cluster["env"]).stdout.strip()
    for child in children:
        tags = child.data.tags
        assert child.info.status == "FINISHED"
        assert tags["dvc.exp_name"] == f"{SWEEP}-{tags['variant']}-s{tags['seed']}"
        assert tags["sweep"] == SWEEP and tags["git.commit"] == commit
    assert "baseline.test_accuracy_mean" in " ".join(parent.data.metrics)


def test_the_comparison_is_printed_and_written(cluster, swept):
    stdout, _ = swept
    table = (cluster["ws"] / "reports" / "sweeps" / SWEEP / "comparison.txt").read_text()
    assert re.search(r"baseline\s+n=3 .* ± .*\[", table), table
    assert re.search(r"fast\s+n=3 .* ± .* p=\d", table), table
    assert table.splitlines()[1] in stdout
    finished = [
        ln for ln in stdout.splitlines() if re.match(r"(baseline|fast)\s+s4[234]\s+acc", ln)
    ]
    assert len(finished) == 6, stdout


def test_a_node_killed_mid_sweep_loses_nothing_and_duplicates_nothing(cluster, swept):
    _, killed = swept
    _, children, others = sweep_runs(cluster["db"])
    assert len(children) == 6 and len({r.data.tags["dvc.exp_name"] for r in children}) == 6
    # The killed attempt's run ended FAILED, out of the sweep, pointing at its retry.
    retired = [r for r in others if r.data.tags["dvc.exp_name"] == killed]
    assert retired and all(r.info.status == "FAILED" for r in retired), others
    retry = next(r for r in children if r.data.tags["dvc.exp_name"] == killed)
    assert {r.data.tags["sweep.superseded_by"] for r in retired} == {retry.info.run_id}
    assert all(r.info.status == "FAILED" for r in others)


def test_rerunning_the_sweep_trains_nothing(cluster, swept):
    before = len(runs(cluster["db"]))
    proc = sweep(cluster, *COMMAND)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "6 of 6 already pushed" in proc.stdout and "trained 0;" in proc.stdout
    assert len(runs(cluster["db"])) == before
    _, children, _ = sweep_runs(cluster["db"])
    assert len(children) == 6


def test_a_run_is_reproduced_from_its_mlflow_run_id_to_the_same_numbers(cluster, swept):
    _, children, _ = sweep_runs(cluster["db"])
    chosen = next(r for r in children if r.data.tags["dvc.exp_name"] == f"{SWEEP}-fast-s43")
    argv = [PYTHON, "-m", "appliedtorch.sweep", "reproduce", chosen.info.run_id]
    proc = subprocess.run(
        cluster["ns"].argv(argv),
        cwd=cluster["ws"],
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "same" in proc.stdout
    metrics = json.loads((cluster["ws"] / "reports" / "mlp" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == pytest.approx(chosen.data.metrics["test_accuracy"], abs=0)
    params = yaml.safe_load((cluster["ws"] / "params.yaml").read_text())
    assert params["mlp"]["lr"] == 0.01 and params["seed"] == 43
    run(["git", "checkout", "-q", "."], cluster["ws"], cluster["env"])


def test_a_bad_override_fails_its_point_not_the_sweep(cluster, swept):
    proc = sweep(cluster, *COMMAND[:2], "--variant", "bad", "mlp.lr=-1", "--stage", "train_mlp")
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: 1 of 2 points failed") and "mlp.lr" in error, proc.stderr
    assert re.search(r"bad\s+s42\s+FAILED: .*mlp\.lr", proc.stdout), proc.stdout
    assert "1 of 2 already pushed" in proc.stdout
