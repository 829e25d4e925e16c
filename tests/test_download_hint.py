"""The missing-data hint names a command that works in the workspace as it is: the download stage
where a classifier section names the dataset, else the `-S` that names it first."""

from __future__ import annotations

import re

import pytest

from appliedtorch.core.errors import DataError
from appliedtorch.data.limits import download_command
from appliedtorch.data.loading import load_dataset
from helpers import BIN
from helpers.repo import make_workspace, run

BOTH_FASHION = {"mlp": {"dataset": "fashion-mnist"}, "cnn": {"dataset": "fashion-mnist"}}
# Generated stand-ins, small: the hinted command runs for real (a --dry run cannot hash the
# data/used/<dataset> file that the `datasets` stage would have written).
SMALL = {"source": "synthetic", "synthetic": {"mnist_train": 60, "mnist_test": 20}}


def project(tmp_path, mlp: str, cnn: str):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / "params.yaml").write_text(f"mlp: {{dataset: {mlp}}}\ncnn: {{dataset: {cnn}}}\n")
    return tmp_path


def test_a_named_dataset_is_fetched_by_its_download_stage(tmp_path):
    ws = project(tmp_path, "mnist", "cifar10")
    assert download_command("cifar10", ws / "sub") == "`dvc repro download@cifar10`"


def test_a_dataset_no_section_names_gets_the_set_param_that_names_it(tmp_path):
    ws = project(tmp_path, "fashion-mnist", "fashion-mnist")
    hint = download_command("mnist", ws)
    assert hint.startswith("`dvc exp run -S mlp.dataset=mnist download@mnist`"), hint


def test_outside_a_project_the_hint_is_the_download_stage(tmp_path):
    assert download_command("mnist", tmp_path) == "`dvc repro download@mnist`"


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_the_hinted_command_runs_in_the_project(tmp_path, tracking_uri, monkeypatch, dataset):
    """The command in the missing-data message, run in a copy of the project whose sections
    both name fashion-mnist, downloads that dataset."""
    ws, env = make_workspace(tmp_path, {**BOTH_FASHION, "data": SMALL}, tracking_uri)
    monkeypatch.chdir(ws)
    with pytest.raises(DataError) as err:
        load_dataset(dataset, ws / "data" / "raw" / dataset)
    (command,) = re.findall(r"run `([^`]+)`", str(err.value))
    out = run([str(BIN / "dvc"), *command.split()[1:]], ws, env).stdout
    assert f"python stages/download.py --params params.yaml --dataset {dataset} " in out, out
    assert load_dataset(dataset, ws / "data" / "raw" / dataset).synthetic
