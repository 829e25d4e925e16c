"""A params value is data, never code or a path: hostile dataset names through DVC.

dvc.yaml's commands and paths hold fixed words only (the download stages run over the fixed
dataset table), so a value such as `x$(touch PWNED)` or `../../victim` reaches no shell and no
path DVC deletes: the first stage that reads it refuses it in one line. Each case runs DVC the way
a user would (`dvc exp run -S`, `--temp`, an edited params.yaml and `dvc repro`) in a fresh
workspace beside a `victim/` directory and a file outside the repository.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import BIN
from helpers.repo import SHRUNK, make_workspace, run

pytestmark = pytest.mark.slow  # each case is a real `dvc` process (~5-10 s)

HOSTILE = {
    "command substitution": "x$(touch PWNED)",
    "backticks": "x`touch PWNED`",
    "semicolon": "mnist; touch PWNED; #",
    "spaces": "mnist fashion-mnist",
    "parent path": "../../victim",
    "absolute path": "/tmp/appliedtorch-victim",
}
# How the value arrives: DVC's -S, -S into a temporary copy, or params.yaml edited by hand.
HOW = {
    "command substitution": "set",
    "backticks": "temp",
    "semicolon": "edit",
    "spaces": "set",
    "parent path": "set",
    "absolute path": "edit",
}


def snapshot(root: Path) -> dict[str, str]:
    """{path: md5} of every file under `root`."""
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("hostile-params")
    (root / "victim").mkdir()
    (root / "victim" / "keep.txt").write_text("precious\n")
    return make_workspace(root, SHRUNK, tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_dataset_value_runs_nothing_and_deletes_nothing(case, workspace, tmp_path):
    ws, env = workspace
    value, how = HOSTILE[case], HOW[case]
    outside = Path("/tmp/appliedtorch-victim")
    outside.mkdir(exist_ok=True)
    (outside / "keep.txt").write_text("precious\n")
    victim_before, outside_before = snapshot(ws.parent / "victim"), snapshot(outside)
    dvc = str(BIN / "dvc")
    if how == "edit":
        params = yaml.safe_load((ws / "params.yaml").read_text())
        params["mlp"]["dataset"] = value
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        cmd = [dvc, "repro", "train_mlp"]
    else:
        cmd = [dvc, "exp", "run", *(["--temp"] if how == "temp" else []), "-S"]
        cmd += [f"mlp.dataset='{value}'", "train_mlp"]  # quoted: Hydra's grammar takes any text
    try:
        proc = run(cmd, ws, env, check=False)
    finally:
        run(["git", "checkout", "params.yaml"], ws, env)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert not list(ws.rglob("PWNED")) and not list(ws.parent.rglob("PWNED"))
    assert not Path("PWNED").exists()
    assert snapshot(ws.parent / "victim") == victim_before
    assert snapshot(outside) == outside_before
    shutil.rmtree(outside, ignore_errors=True)
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error: ")]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert "mlp.dataset must be" in ours[0], ours
    assert not (ws / "data" / "raw").exists() or all(
        p.name in ("mnist", "fashion-mnist", "cifar10") for p in (ws / "data" / "raw").iterdir()
    )
