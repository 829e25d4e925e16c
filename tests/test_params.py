"""params.yaml validation: defaults, the bad-input catalogue, and the one-line error contract."""

from __future__ import annotations

import pytest

from appliedtorch.core.errors import ParamsError
from appliedtorch.core.params import flatten, load_params, run_params
from conftest import REPO, run_script


def test_repo_params_are_valid_and_match_tutorial_defaults():
    p = load_params(REPO / "params.yaml")
    assert (p.mlp.epochs, p.mlp.batch_size, p.mlp.lr, p.mlp.hidden_size) == (5, 64, 0.001, 128)
    assert (p.cnn.epochs, p.cnn.batch_size, p.cnn.lr) == (10, 128, 0.001)
    assert (p.cnn.step_size, p.cnn.gamma, p.cnn.dropout, p.cnn.augment) == (5, 0.1, 0.5, True)
    assert p.seed == 42 and p.device == "auto"
    assert p.tracking.uri == "sqlite:///mlflow.db"


def test_run_params_flattens_section_with_dots():
    p = load_params(REPO / "params.yaml")
    flat = run_params(p, "cnn")
    assert flat["cnn.lr"] == p.cnn.lr and flat["seed"] == 42 and flat["device"] == "auto"
    assert not any(k.startswith("mlp.") for k in flat)
    assert flatten({"a": {"b": {"c": 1}}}) == {"a.b.c": 1}


def test_scientific_notation_reads_as_float(params_file):
    path = params_file()
    path.write_text(path.read_text().replace("lr: 0.001", "lr: 1e-3", 1))
    assert load_params(path).mlp.lr == pytest.approx(1e-3)


# (overrides or raw text, expected message fragment). Each must stop with one line naming the key.
BAD = [
    ({"mlp": {"lr": -1}}, "params.yaml: mlp.lr must be > 0 (got -1)"),
    ({"mlp": {"lr": 0}}, "params.yaml: mlp.lr must be > 0 (got 0)"),
    ({"mlp": {"epochs": 0}}, "params.yaml: mlp.epochs must be > 0 (got 0)"),
    ({"cnn": {"batch_size": -8}}, "params.yaml: cnn.batch_size must be > 0 (got -8)"),
    ({"cnn": {"dropout": 1.0}}, "params.yaml: cnn.dropout must be < 1 (got 1.0)"),
    ({"cnn": {"dropout": -0.1}}, "params.yaml: cnn.dropout must be >= 0 (got -0.1)"),
    ({"mlp": {"epochs": "five"}}, "params.yaml: mlp.epochs must be an integer (got 'five')"),
    ({"mlp": {"epochs": 2.5}}, "params.yaml: mlp.epochs must be an integer (got 2.5)"),
    ({"cnn": {"augment": "yes"}}, "params.yaml: cnn.augment must be true or false (got 'yes')"),
    ({"mlp": {"learning_rate": 0.1}}, "params.yaml: unknown key 'mlp.learning_rate'"),
    ({"extra_section": {}}, "params.yaml: unknown key 'extra_section'"),
    ({"device": "gpu"}, "params.yaml: device must be auto, cpu, cuda or cuda:N (got 'gpu')"),
    ({"seed": -1}, "params.yaml: seed must be >= 0 (got -1)"),
    ({"pinn": {"dtype": "float16"}}, "params.yaml: pinn.dtype must be 'float32' or 'float64'"),
    ({"pinn": {"boundary": "periodic"}}, "params.yaml: pinn.boundary must be 'soft' or 'hard'"),
    ({"mlp": {"train_limit": 0}}, "params.yaml: mlp.train_limit must be > 0 (got 0)"),
    ({"mlp": None}, "params.yaml: mlp must be a mapping (got None)"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_params_raise_one_line_naming_the_key(params_file, overrides, message):
    path = params_file(overrides)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    text = str(info.value)
    assert text.startswith(message), text
    assert "\n" not in text
    assert info.value.exit_code == 2


RAW = [
    ("", "params.yaml: file is empty"),
    ("seed: [1, 2\n", "params.yaml: not valid YAML at line 2"),
    ("- a\n- b\n", "params.yaml: top level must be a mapping of sections (got list)"),
    ("seed: 1\n", "params.yaml: section 'data' is missing"),
]


@pytest.mark.parametrize(("text", "message"), RAW, ids=[m for _, m in RAW])
def test_unreadable_or_incomplete_files(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        load_params(path)


def test_missing_section_is_named(params_file):
    path = params_file()
    text = path.read_text()
    path.write_text(text[: text.index("pinn:")] + text[text.index("math:") :])
    with pytest.raises(ParamsError, match="^params.yaml: section 'pinn' is missing$"):
        load_params(path)


def test_missing_file(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mlp": {"lr": -1}}, "error: params.yaml: mlp.lr must be > 0 (got -1)"),
        ({"cnn": {"color": 1}}, "error: params.yaml: unknown key 'cnn.color'"),
    ],
)
def test_checker_cli_exits_2_with_one_line(params_file, overrides, message):
    """`python -m appliedtorch.core.params` reports like every stage: one line, exit 2, no traceback."""
    path = params_file(overrides)
    proc = run_script("src/appliedtorch/params.py", path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [message]
    assert "Traceback" not in proc.stderr
