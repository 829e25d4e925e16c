"""params.yaml validation: defaults, the bad-input catalogue, and the one-line error contract."""

from __future__ import annotations

import os
import re
import time

import pytest

from appliedtorch.core.errors import ParamsError
from appliedtorch.core.params import flatten, run_params
from appliedtorch.params import load_params
from helpers import REPO, run_script


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
    """`python -m appliedtorch.params` reports like every stage: one line, exit 2, no traceback."""
    path = params_file(overrides)
    proc = run_script("src/appliedtorch/params.py", path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [message]
    assert "Traceback" not in proc.stderr


# ---- hostile and careless files ---------------------------------------------------------------


def _laughs(levels: int = 9) -> str:
    """The YAML "billion laughs": each level lists the previous one 9 times (~1.5 KB of text)."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_yaml_aliases_are_refused_fast_and_short(params_file):
    path = params_file()
    path.write_text(path.read_text() + _laughs())
    assert len(_laughs()) < 1600
    start = time.perf_counter()
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert time.perf_counter() - start < 1
    assert str(info.value) == (
        "params.yaml: YAML anchor &l0 at line 82: anchors and aliases are not allowed in "
        "params.yaml; write the values out"
    ).replace("82", str(path.read_text().count("\n") - 9))


def test_an_alias_alone_is_refused(params_file):
    path = params_file()
    _edit(path, "  lr: 0.001\n", "  lr: &rate 0.001\n")
    with pytest.raises(ParamsError, match=r"^params\.yaml: YAML anchor &rate at line \d+: "):
        load_params(path)


DUPLICATES = [
    # (old, new, message): the first occurrence of `old` becomes `new`
    ("  lr: 0.001\n", "  lr: 0.001\n  lr: 0.1\n",
     r"params\.yaml: key 'mlp\.lr' appears twice \(lines (\d+) and (\d+)\); keep one$"),
    ("math:\n", "mlp:\n  epochs: 3\nmath:\n",
     r"params\.yaml: section 'mlp' appears twice \(lines (\d+) and (\d+)\); keep one$"),
    ("seed: 42\n", "seed: 42\nseed: 7\n",
     r"params\.yaml: section 'seed' appears twice \(lines (\d+) and (\d+)\); keep one$"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "message"), DUPLICATES)
def test_duplicate_keys_and_sections_are_refused(params_file, old, new, message):
    """PyYAML keeps the last value silently; DVC refuses the file (`dvc status`: "found
    duplicate key"). Stages and the checker refuse it too, naming the key and both lines."""
    path = params_file()
    _edit(path, old, new)
    with pytest.raises(ParamsError) as info:
        load_params(path)
    m = re.match(message, str(info.value))
    assert m, info.value
    lines = path.read_text().splitlines()
    key = re.search(r"'(?:\w+\.)?(\w+)'", str(info.value))[1]
    for number in m.groups():
        assert lines[int(number) - 1].strip().startswith(f"{key}:")


def test_checker_cli_and_stage_give_the_same_duplicate_key_line(params_file, tmp_path):
    path = params_file()
    line = path.read_text().splitlines().index("  lr: 0.001") + 1  # mlp's, the first
    _edit(path, "  lr: 0.001\n", "  lr: 0.001\n  lr: 0.1\n")
    checker = run_script("src/appliedtorch/params.py", path)
    stage = run_script("stages/math_demos.py", "--params", path, "--reports", tmp_path / "r")
    for proc in (checker, stage):
        assert proc.returncode == 2
        assert proc.stderr.strip().splitlines() == [
            f"error: params.yaml: key 'mlp.lr' appears twice (lines {line} and {line + 1}); keep one"
        ]
    assert not (tmp_path / "r").exists()


def test_non_utf8_byte_is_one_line(params_file):
    path = params_file()
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    with pytest.raises(ParamsError, match=r"^params\.yaml: not UTF-8 text \(byte 0xe9 at line "
                       r"\d+\); save it as UTF-8$"):  # fmt: skip
        load_params(path)


BOUNDS = [
    ({"seed": 2**64}, r"seed must be <= 4294967295 \(got 18446744073709551616\) \(numpy takes "
     r"seeds below 2\^32\)$"),
    ({"device": "cuda:128"}, r"device must be cuda:0 to cuda:127 \(got 'cuda:128'\)$"),
    ({"device": "cuda:0123"}, r"device must be auto, cpu, cuda or cuda:N \(got 'cuda:0123'\)$"),
    ({"device": "cuda:" + "9" * 60}, r"device must be auto, cpu, cuda or cuda:N \(got 'cuda:9{31}\.\.\.\)$"),
    ({"math": {"fft_duration": 0.01}}, r"math\.fft_sample_rate x math\.fft_duration must give 2 "
     r"to 10000000 samples \(got 100 Hz x 0\.01 s = 1\)$"),
    ({"math": {"fft_sample_rate": 1e7, "fft_duration": 100.0}}, r"math\.fft_sample_rate x "),
    ({"data": {"retries": 20}}, r"data\.retries must be <= 5 \(got 20\): each retry waits twice as "
     r"long as the one before \(0\.5 s, 1 s, 2 s, \.\.\., at most 8 s\), so 5 retries already wait "
     r"15\.5 s per file$"),
    ({"data": {"file_timeout": 0}}, r"data\.file_timeout must be > 0 \(got 0\)$"),
    ({"mlp": {"hidden_size": 10**12}}, r"mlp\.hidden_size must be <= 65536 \(got 1000000000000\)$"),
    ({"mlp": {"epochs": 10**30}}, r"mlp\.epochs must be <= 100000 \(got 10{30}\)$"),
    ({"pinn": {"hidden_sizes": [10, 10**9]}}, r"pinn\.hidden_sizes must be layer widths from 1 to "
     r"65536 \(got \[10, 1000000000\]\)$"),
    ({"pinn": {"collocation_points": 10**10}}, r"pinn\.collocation_points must be <= 10000000 "),
    ({"data": {"synthetic": {"mnist_train": 10**9}}}, r"data\.synthetic\.mnist_train must be <= "
     r"120000 "),
    ({"mlp": {"epochs": "x" * 5000}}, r"mlp\.epochs must be an integer \(got 'x{36}\.\.\.\)$"),
    ({"data": {"source": "x" * 5000}}, r"data\.source must have at most 4096 items or characters$"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "message"), BOUNDS, ids=[str(o)[:40] for o, _ in BOUNDS])
def test_values_are_bounded_to_what_torch_takes(params_file, overrides, message):
    with pytest.raises(ParamsError) as info:
        load_params(params_file(overrides))
    assert re.match(r"params\.yaml: " + message, str(info.value)), info.value
    assert len(str(info.value)) < 300


def test_huge_integer_literal_is_one_line(params_file):
    path = params_file()
    _edit(path, "epochs: 5", "epochs: " + "9" * 5000)
    with pytest.raises(
        ParamsError, match=r"^params\.yaml: not valid YAML: Exceeds the limit"
    ) as info:
        load_params(path)
    assert len(str(info.value)) < 150


def test_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 1\n" + "#" * (1 << 20))
    with pytest.raises(ParamsError, match=r"^params\.yaml: larger than 64 KB; not a params file$"):
        load_params(path)


@pytest.mark.parametrize(
    "device",
    ["auto", "cpu", "mps", "cuda", "cuda:0", "cuda:7", "cuda:127", "cuda:128", "cuda:255",
     "cuda:256", "cuda:0123", "cuda:00", "cuda:-1", "cuda:", "CPU", " cpu", "cpu:0", "gpu"],
)  # fmt: skip
def test_accepted_devices_are_exactly_what_torch_parses_unchanged(params_file, device):
    """torch.device wraps indices past 127 (int8): `cuda:128` is cuda:-128, `cuda:256` cuda:0."""
    import torch

    try:
        load_params(params_file({"device": device}))
        accepted = True
    except ParamsError:
        accepted = False
    if device == "auto":
        assert accepted
        return
    try:
        parsed = str(torch.device(device)) == device
    except RuntimeError:
        parsed = False
    assert accepted == (parsed and not device.startswith("cpu:")), (device, accepted, parsed)


def test_checker_output_piped_into_head_is_quiet(tmp_path):
    """`python -m appliedtorch.params params.yaml | head -1`: no BrokenPipeError traceback."""
    import subprocess

    from helpers import PYTHON, REPO

    proc = subprocess.run(
        f"{PYTHON} -m appliedtorch.params {REPO / 'params.yaml'} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},  # one write per line: the pipe closes early
    )
    assert proc.stdout.startswith(f"{REPO / 'params.yaml'}: ok")
    assert proc.stderr == ""
