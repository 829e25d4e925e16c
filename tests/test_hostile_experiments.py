"""Experiment data is input: `recipes compare --results` against what `dvc exp show --json` says.

Experiments pulled from a shared remote carry metrics and params someone else wrote. Each case
runs `python -m appliedtorch.recipes compare ... --results` as a real process, with a `dvc` on
PATH that prints the case's JSON, and requires the experiment and the field it cannot use named
in one line while the other experiments still compare (or, when nothing can be read, one
`error:` line and exit 1 - never a traceback).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

RECIPE = REPO / "recipes" / "cnn-fast.yaml"
GOOD = {  # members' statistics of a seeds: 3 run, as ensemble.py writes them
    "test_accuracy": 0.62,
    "test_accuracy_mean": 0.61,
    "test_accuracy_sd": 0.01,
    "test_accuracy_ci95_low": 0.585,
    "test_accuracy_ci95_high": 0.635,
}


def experiment(name: str, metrics: object = None, seeds: object = 3) -> dict:
    """One entry of a commit's `experiments`, shaped as DVC 3 writes it."""
    data = {
        "params": {"params.yaml": {"data": {"cnn": {"seeds": seeds, "epochs": 2}}}},
        "metrics": {"reports/cnn/metrics.json": {"data": GOOD if metrics is None else metrics}},
    }
    return {"name": name, "revs": [{"rev": "abc", "name": name, "data": data}]}


def shown(*experiments: dict) -> list:
    return [{"rev": "workspace", "data": {}}, {"rev": "HEAD", "experiments": list(experiments)}]


def results(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    """`recipes compare --results --only batch_norm` with a dvc that prints `text`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "shown.json").write_text(text)
    dvc = bin_dir / "dvc"
    dvc.write_text(f"#!/bin/sh\ncat '{tmp_path / 'shown.json'}'\n")
    dvc.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "appliedtorch.recipes", "compare", str(RECIPE), "--params",
           str(REPO / "params.yaml"), "--name", "cmp", "--only", "batch_norm", "--results"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def row(out: str, variant: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(f"  {variant} ")]
    return line


def test_good_experiments_compare(tmp_path: Path) -> None:
    text = json.dumps(shown(*(experiment(f"cmp.{v}") for v in ("baseline", "recipe"))))
    proc = results(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"n=3  61\.00 % ± 2\.50 .* p=1$", row(proc.stdout, "recipe"))


BAD_VARIANT = {
    # case: (the recipe experiment's metrics and seeds, key words of its line)
    "missing-sd": (
        {k: v for k, v in GOOD.items() if k != "test_accuracy_sd"},
        3,
        r"has test_accuracy_mean but no test_accuracy_sd",
    ),
    "string-accuracy": (
        {**GOOD, "test_accuracy_mean": "0.61"},
        3,
        r"test_accuracy_mean is '0\.61': input should be a valid number",
    ),
    "nan-accuracy": (
        {**GOOD, "test_accuracy_ci95_low": float("nan")},
        3,
        r"test_accuracy_ci95_low is nan: input should be a finite number",
    ),
    "accuracy-above-one": ({**GOOD, "test_accuracy": 7}, 3, r"test_accuracy is 7: .*less than"),
    "seeds-10**400": (GOOD, 10**400, r"cnn\.seeds is 100000000000\.\.\. \(401 digits\): .*integer"),
    "seeds-0": (GOOD, 0, r"params\.yaml cnn\.seeds is 0: input should be greater than"),
    "seeds-string": (GOOD, "3", r"cnn\.seeds is '3': input should be a valid integer"),
    "metrics-a-string": ("oops", 3, r"reports/cnn/metrics\.json is not a mapping"),
    "mean-outside-ci": ({**GOOD, "test_accuracy_mean": 0.9}, 3, r"mean 0\.9 outside its CI"),
}


@pytest.mark.parametrize("case", BAD_VARIANT)
def test_a_bad_field_names_the_experiment_and_the_others_compare(case, tmp_path) -> None:
    metrics, seeds, expected = BAD_VARIANT[case]
    text = json.dumps(
        shown(
            experiment("cmp.baseline"),
            experiment("cmp.recipe", metrics, seeds),
            experiment("cmp.batch_norm"),
        )
    )
    proc = results(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    line = row(proc.stdout, "recipe")
    assert "not compared: experiment cmp.recipe: " in line and re.search(expected, line), line
    assert re.search(r"n=3  61\.00 % .* p=1$", row(proc.stdout, "batch_norm")), proc.stdout


def test_a_string_where_the_experiments_should_be_leaves_that_commit_out(tmp_path) -> None:
    text = json.dumps([{"rev": "old", "experiments": "oops"}, *shown(experiment("cmp.baseline"))])
    proc = results(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"commit 0: 'experiments' is a str, not a list: left out", proc.stderr)
    assert "n=3  61.00 %" in row(proc.stdout, "baseline")


def test_an_entry_that_is_not_an_experiment_is_left_out(tmp_path) -> None:
    text = json.dumps(shown(experiment("cmp.baseline"), ["x"], {"name": 7, "revs": []}))
    proc = results(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert "experiment <list>: not a mapping" in proc.stderr
    assert "experiment 7: its name is not 1 to 255 printable characters" in proc.stderr


WHOLE = {
    # case: (what dvc prints, key words of the one error line)
    "100000-deep": ("[" * 100_000 + "]" * 100_000, r"nested 100000 deep, more than 64: refused"),
    "a-string": (json.dumps("experiments"), r"a str, not a list of commits"),
    "not-json": ("{oops", r"not JSON \(Expecting property name"),
    "huge-integer": ("[" + "9" * 5000 + "]", None),  # read as too many digits: no result
}


@pytest.mark.parametrize("case", WHOLE)
def test_output_that_cannot_be_read_is_one_line(case: str, tmp_path: Path) -> None:
    text, expected = WHOLE[case]
    proc = results(tmp_path, text)
    if expected is None:  # nothing to compare, and no ValueError about 4300 digits either
        assert proc.returncode == 0 and "no result" in row(proc.stdout, "recipe"), proc.stderr
        return
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(rf"error: dvc exp show --json: .*{expected}", lines[0])


def test_output_past_the_byte_bound_is_refused(tmp_path, monkeypatch) -> None:
    from appliedtorch import exp_show

    monkeypatch.setattr(exp_show, "MAX_SHOWN_BYTES", 1000)
    with pytest.raises(exp_show.AppliedTorchError, match=r"printed more than .* refused"):
        exp_show.read_bounded([sys.executable, "-c", "print('x' * 5000)"])


def test_a_few_seeds_ci_past_zero_and_one_is_a_result_not_a_refusal():
    """Student's t at n = 2 or 3 is wide: a 95 % CI of a mean accuracy may reach below 0 or above
    1, and the comparison shows it (the mean and the ensemble must still be fractions)."""
    from appliedtorch.comparison import estimate

    wide = {**GOOD, "test_accuracy_ci95_low": -0.416, "test_accuracy_ci95_high": 1.2}
    data = experiment("cmp.baseline", wide)["revs"][0]["data"]
    got = estimate(data, "cnn")
    assert (got["low"], got["high"], got["n"]) == (-0.416, 1.2, 3)
