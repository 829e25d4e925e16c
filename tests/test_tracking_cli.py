"""The entry points' last line of defence, and passwords kept out of what they print.

Every command (stages, appliedtorch-predict, the recipes and params commands) runs its body in
`core.cli.run_stage`: an expected error is one `error:` line; a bug is one `error: internal error
in <stage>: ...` line naming a log file with the traceback, never a traceback on the terminal.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from appliedtorch.core.cli import command_name
from helpers import PYTHON, REPO, merge

SECRET = "s3cr3t-pw"

BUG = """
from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError

def main():
    if {expected!r}:
        raise AppliedTorchError("params.yaml: mlp.lr must be > 0 (got -1)")
    settings = {{"uri": "http://alice:{secret}@mlflow.example:5000"}}
    raise ValueError("cannot parse " + settings["uri"] + "\\nsecond line")

run_stage(main)
"""


def run_script(tmp_path: Path, expected: bool) -> subprocess.CompletedProcess:
    script = tmp_path / "stages" / "boom.py"
    script.parent.mkdir(exist_ok=True)
    script.write_text(BUG.format(expected=expected, secret=SECRET))
    return subprocess.run(
        [PYTHON, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_a_bug_is_one_line_naming_a_log_with_the_traceback(tmp_path):
    proc = run_script(tmp_path, expected=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    match = re.fullmatch(
        r"error: internal error in boom: ValueError: cannot parse "
        r"http://alice:\*\*\*@mlflow\.example:5000; traceback in (\S+\.log) \(.*\)",
        lines[0],
    )
    assert match, lines[0]
    log = Path(match.group(1))
    try:
        text = log.read_text()
        assert text.startswith("Traceback (most recent call last):")
        assert "boom.py" in text and "ValueError: cannot parse" in text and "second line" in text
        assert SECRET not in text  # the log is redacted like every line
        assert log.stat().st_mode & 0o077 == 0  # only its owner reads it
    finally:
        log.unlink(missing_ok=True)


def test_an_expected_error_keeps_its_one_line(tmp_path):
    proc = run_script(tmp_path, expected=True)
    assert proc.returncode == 1
    assert proc.stderr == "error: params.yaml: mlp.lr must be > 0 (got -1)\n"


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("stages/train.py --section mlp", "train_mlp"),
        ("stages/train.py --section=cnn", "train_cnn"),
        ("stages/datasets.py --used data/used", "datasets"),
        ("/repo/stages/download.py", "download"),
        ("/venv/bin/appliedtorch-predict", "appliedtorch-predict"),
        ("/repo/src/appliedtorch/params.py", "appliedtorch.params"),
        ("/home/u/appliedtorch/src/appliedtorch/recipes.py", "appliedtorch.recipes"),
        ("", "appliedtorch"),
    ],
)
def test_command_name(monkeypatch, argv0, name):
    monkeypatch.setattr(sys, "argv", argv0.split(" ") if argv0 else [argv0])
    assert command_name() == name


def test_params_checker_prints_no_password(tmp_path):
    params = merge(
        yaml.safe_load((REPO / "params.yaml").read_text()),
        {"tracking": {"uri": f"postgresql://alice:{SECRET}@db.example:5432/mlflow"}},
    )
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        [PYTHON, "-m", "appliedtorch.params", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "  tracking.uri = postgresql://alice:***@db.example:5432/mlflow" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
