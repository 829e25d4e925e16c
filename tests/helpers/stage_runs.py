"""A stage script run in this process, and what a failed run may and may not leave behind.

code, err = run_stage_here("math_demos", ["--reports", "reports/math"], monkeypatch, capsys)
assert code == 1 and "tracking" in one_error_line(err)
"""

from __future__ import annotations

import contextlib
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from helpers import REPO


def leftovers(root: Path) -> list[Path]:
    """Temporary files and staging directories: none may survive a stage, failed or not."""
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".outputs." in p.name]


# DVC stages run by a script with a section: `train_mlp` is `stages/train.py --section mlp`.
SECTION_STAGES = {"train_mlp": ("train", "mlp"), "train_cnn": ("train", "cnn")}


def stage_script(stage: str) -> tuple[Path, list[str]]:
    """The script that runs DVC stage `stage` and the arguments that pick it."""
    script, section = SECTION_STAGES.get(stage, (stage, None))
    return REPO / "stages" / f"{script}.py", ["--section", section] if section else []


def run_stage_here(stage: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run DVC stage `stage`'s script as __main__ in this process with params.yaml of the cwd;
    return its exit code and stderr."""
    script, picks = stage_script(stage)
    argv = [*picks, "--params", "params.yaml", *argv]
    monkeypatch.setattr(sys, "argv", [script.name, *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    return info.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The one `error:` line of a failed stage's stderr, which must be its last line."""
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err[-3000:]
    return errors[0]


def run_statuses(ws: Path, experiment: str) -> list[str]:
    """The status of each run of `experiment` in ws/mlflow.db (none if it does not exist)."""
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return [r.info.status for r in client.search_runs([exp.experiment_id])] if exp else []


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        # -l: MLflow's sqlite engine or a leaked handle must not leave the mount behind.
        subprocess.run(["umount", "-l", str(path)], check=False)
