"""Sharing data through a DVC remote: repro -> push -> fresh clone -> pull -> nothing to do.

Runs the real download stage (synthetic source, tiny sizes) in a temporary git+DVC repository
with a local directory as the default remote, as README's `dvc remote add -d` shows.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from appliedtorch.data.loading import load_dataset
from helpers import REPO

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "appliedtorch-tests",
    "GIT_AUTHOR_EMAIL": "tests@appliedtorch.invalid",
    "GIT_COMMITTER_NAME": "appliedtorch-tests",
    "GIT_COMMITTER_EMAIL": "tests@appliedtorch.invalid",
}
TINY = {"mnist_train": 200, "mnist_test": 50, "cifar10_train": 100, "cifar10_test": 20}


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc.stdout + proc.stderr


def tree_md5s(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def make_repo(ws: Path) -> None:
    """The project's data stages alone, `datasets` and `download` (the other stages' inputs are
    not needed here)."""
    ws.mkdir()
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: pipeline["stages"][name] for name in ("datasets", "download")}
    (ws / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = "synthetic"
    params["data"]["synthetic"].update(TINY)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # The stages' code deps, as dvc.yaml lists them (the stages run the installed package).
    deps = stages["datasets"]["deps"] + stages["download"]["do"]["deps"]
    for dep in dict.fromkeys(d for d in deps if d.startswith(("stages/", "src/"))):
        src, dst = REPO / dep, ws / dep
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True)
        else:
            shutil.copy(src, dst)


@pytest.mark.slow
def test_dvc_remote_round_trip(tmp_path: Path) -> None:
    env = {
        **os.environ,
        **GIT_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    ws, clone, remote = tmp_path / "ws", tmp_path / "clone", tmp_path / "remote"
    make_repo(ws)
    sh(["git", "init", "-q", "-b", "main"], ws, env)
    sh([DVC, "init", "-q"], ws, env)
    sh([DVC, "config", "core.analytics", "false"], ws, env)
    out = sh([DVC, "repro", "download"], ws, env)
    assert "download@mnist" in out and "download@cifar10" in out
    sh([DVC, "remote", "add", "-d", "local", str(remote)], ws, env)
    sh(["git", "add", "-A"], ws, env)
    sh(["git", "commit", "-qm", "download stage with a local remote"], ws, env)
    tracked = sh(["git", "ls-files"], ws, env).split()
    assert "dvc.lock" in tracked and "data/raw/.gitignore" in tracked
    assert not [f for f in tracked if f.startswith(("data/raw/mnist", "data/raw/cifar10"))]
    sh([DVC, "push"], ws, env)
    assert any(p.is_file() for p in remote.rglob("*"))

    sh(["git", "clone", "-q", str(ws), str(clone)], tmp_path, env)
    assert not (clone / "data" / "raw" / "mnist").exists()
    sh([DVC, "pull"], clone, env)
    assert tree_md5s(clone / "data" / "raw") == tree_md5s(ws / "data" / "raw")
    assert sh([DVC, "status"], clone, env).strip().endswith("Data and pipelines are up to date.")
    assert "Running stage" not in sh([DVC, "repro"], clone, env)
    pulled = load_dataset("mnist", clone / "data" / "raw" / "mnist")
    assert pulled.source == "synthetic" and len(pulled.train_labels) == TINY["mnist_train"]
