"""The sweep's pieces without a cluster: its grid, the refusals before any node starts, the
statistics of its comparison, and a failed point's one line. (tests/test_sweep_cluster.py runs
whole sweeps on two Ray nodes.)"""

from __future__ import annotations

import os
import subprocess

import pytest
from scipy import stats

from appliedtorch.core.errors import AppliedTorchError, ParamsError
from appliedtorch.sweep import checks, grid, results, task
from helpers import BIN, PYTHON, REPO
from helpers.repo import GIT_ENV


def test_each_variant_and_seed_is_one_experiment_named_sweep_variant_seed():
    table = {"baseline": {}, "fast": {"mlp.lr": 0.01}}
    points = grid.grid("lr", table, [42, 43], ["train_mlp"], ["mlp.train_limit=500"], cpus=2)
    assert [p.name for p in points] == [
        "lr-baseline-s42",
        "lr-baseline-s43",
        "lr-fast-s42",
        "lr-fast-s43",
    ]
    fast = points[3].sets
    assert "mlp.lr=0.01" in fast and "seed=43" in fast and "mlp.train_limit=500" in fast
    assert "mlp.threads=2" in fast  # torch's threads follow the task's CPUs


def test_a_variant_that_sets_threads_keeps_them():
    points = grid.grid("t", {"baseline": {}, "four": {"mlp.threads": 4}}, [1], ["train_mlp"])
    assert "mlp.threads=4" in points[1].sets and "mlp.threads=1" in points[0].sets


def test_grid_options_make_every_combination():
    table = grid.combinations(["mlp.lr=0.001,0.01", "mlp.batch_size=32,64"])
    assert sorted(table) == [
        "lr_0.001_batch_size_32",
        "lr_0.001_batch_size_64",
        "lr_0.01_batch_size_32",
        "lr_0.01_batch_size_64",
    ]
    assert table["lr_0.01_batch_size_64"] == {"mlp.lr": 0.01, "mlp.batch_size": 64}


def test_the_stage_comes_from_the_sections_the_variants_change():
    assert grid.stages_for({"baseline": {}, "x": {"cnn.lr": 0.1}}, []) == ("train_cnn",)
    with pytest.raises(ParamsError, match="--stage"):
        grid.stages_for({"baseline": {}}, [])
    with pytest.raises(ParamsError, match="training stage"):
        grid.stages_for({"baseline": {}}, ["pinn"])


@pytest.mark.parametrize("name", ["", "a b", "x/y", "-n", "a-b"])
def test_a_name_dvc_or_the_naming_scheme_would_refuse_is_one_line(name):
    with pytest.raises(ParamsError, match="letters, digits"):
        grid.grid(name, {"baseline": {}}, [1], ["train_mlp"])


def git(cwd, *args):
    subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV}
    )


@pytest.fixture
def repo(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    (ws / "params.yaml").write_text("seed: 1\n")
    git(ws, "add", "-A")
    git(ws, "commit", "-qm", "one")
    return ws


def test_uncommitted_changes_are_refused(repo):
    assert len(checks.committed_head(repo)) == 40
    (repo / "params.yaml").write_text("seed: 2\n")
    with pytest.raises(AppliedTorchError, match=r"uncommitted changes \(params.yaml\)"):
        checks.committed_head(repo)


def test_no_git_remote_or_an_unpushed_commit_is_refused(repo, tmp_path):
    head = checks.committed_head(repo)
    with pytest.raises(AppliedTorchError, match="no git remote 'origin'"):
        checks.git_remote(repo, "origin", head)
    git(tmp_path, "init", "-q", "--bare", "remote.git")
    git(repo, "remote", "add", "origin", str(tmp_path / "remote.git"))
    with pytest.raises(AppliedTorchError, match="not on git remote 'origin'.*git push"):
        checks.git_remote(repo, "origin", head)
    git(repo, "push", "-q", "origin", "main")
    assert checks.git_remote(repo, "origin", head) == str(tmp_path / "remote.git")


def test_no_default_dvc_remote_is_refused(repo):
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    with pytest.raises(AppliedTorchError, match="no default DVC remote"):
        checks.dvc_remote(repo)


def test_a_local_file_is_refused_once_a_node_runs_elsewhere():
    places = {"tracking URI": "sqlite:////srv/mlflow.db", "git remote": "ssh://git@h/r.git"}
    checks.check_shared(places, ["127.0.0.1", "10.0.0.5"], here="10.0.0.5")  # all here: fine
    with pytest.raises(AppliedTorchError, match="tracking URI sqlite:.*local file.*10.0.0.9"):
        checks.check_shared(places, ["10.0.0.5", "10.0.0.9"], here="10.0.0.5")
    shared = {"tracking URI": "http://10.0.0.5:5000", "DVC remote": "s3://bucket/dvc"}
    checks.check_shared(shared, ["10.0.0.5", "10.0.0.9"], here="10.0.0.5")


def test_a_variant_is_the_mean_over_its_seeds_with_a_t_interval():
    values = [0.90, 0.92, 0.95]
    est = results.summarise(values, [])
    half = stats.t.ppf(0.975, 2) * stats.tstd(values) / 3**0.5
    assert est["mean"] == pytest.approx(0.92333333, abs=1e-8)
    assert est["high"] - est["mean"] == pytest.approx(half, rel=1e-12)
    assert "ensemble" not in est


def test_the_comparison_gives_welch_p_against_the_baseline():
    points = grid.grid("s", {"baseline": {}, "fast": {"mlp.lr": 0.01}}, [1, 2, 3], ["train_mlp"])
    acc = {"s-baseline-s1": 0.80, "s-baseline-s2": 0.82, "s-baseline-s3": 0.81}
    acc |= {"s-fast-s1": 0.90, "s-fast-s2": 0.93, "s-fast-s3": 0.91}
    shown = {
        name: {"metrics": {"reports/mlp/metrics.json": {"data": {"test_accuracy": value}}}}
        for name, value in acc.items()
    }
    lines, summary = results.comparison(points, shown)
    base, fast = list(acc.values())[:3], list(acc.values())[3:]
    p = stats.ttest_ind(fast, base, equal_var=False).pvalue
    assert f"p={p:.4g}" in lines[2] and lines[2].lstrip().startswith("fast")
    assert summary["mlp.fast.test_accuracy_mean"] == pytest.approx(sum(fast) / 3)


def test_a_failed_command_is_the_stage_error_line():
    out = (
        "Running stage 'train_mlp':\nerror: params.yaml: mlp.lr must be > 0 (got -1)\nERROR: failed"
    )
    assert task.reason(out) == "params.yaml: mlp.lr must be > 0 (got -1)"
    assert (
        task.reason("ERROR: failed to reproduce 'train_mlp'") == "failed to reproduce 'train_mlp'"
    )


def test_the_command_refuses_a_dirty_workspace_in_one_line(repo):
    (repo / "params.yaml").write_text((REPO / "params.yaml").read_text())
    proc = subprocess.run(
        [PYTHON, "-m", "appliedtorch.sweep", "run", "x", "--stage", "train_mlp"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: uncommitted changes (params.yaml): the nodes clone the last commit; commit and "
        "push them"
    ]


def test_a_variant_named_twice_or_baseline_changed_is_refused():
    params = REPO / "params.yaml"
    with pytest.raises(ParamsError, match="--variant baseline: named twice"):
        grid.variant_table([["baseline", "mlp.lr=1"]], [], None, params)
    with pytest.raises(ParamsError, match="--variant a: named twice"):
        grid.variant_table([["a", "mlp.lr=1"], ["a", "mlp.lr=2"]], [], None, params)
