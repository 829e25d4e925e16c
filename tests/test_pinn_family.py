"""One net u(x; k) for u'' + k·u = 0: hard boundary values for every k, checked against the
closed form on values of k it was not trained on; its model file and CLI as hostile input."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from appliedtorch.core.errors import AppliedTorchError, ParamsError
from appliedtorch.params import parse_params
from appliedtorch.pinn import family, problem
from appliedtorch.pinn.params import PINNFamilyParams
from helpers import PYTHON, REPO, run_script

# A small grid and a small net: seconds, not the stage's minute.
SMALL = dict(
    hidden_sizes=[8, 8],
    x_points=16,
    k_points=8,
    adam_steps=100,
    lbfgs_steps=50,
    lm_steps=300,
    eval_k_points=40,
    eval_x_points=200,
)


def _net(seed: int = 0) -> family.FamilyNet:
    torch.manual_seed(seed)
    return family.FamilyNet([6, 6], 0.25, 3.0, torch.float64)


def test_boundary_values_hold_exactly_for_every_k_untrained():
    net = _net()
    k = torch.linspace(0.25, 3.0, 50, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        assert torch.equal(net(torch.zeros_like(k), k), torch.zeros_like(k))
        assert_close(net(torch.full_like(k, problem.B), k), torch.ones_like(k), atol=1e-15, rtol=0)


def test_taylor_second_derivative_along_x_matches_autograd():
    net = _net(1)
    x = torch.linspace(0, problem.B, 9, dtype=torch.float64).unsqueeze(1).requires_grad_(True)
    k = torch.full_like(x, 1.7)
    u = net(x, k)
    (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (uxx,) = torch.autograd.grad(ux.sum(), x)
    u2, uxx2 = net.value_and_uxx(x.detach(), k)
    assert_close(u2, u.detach(), atol=1e-14, rtol=0)
    assert_close(uxx2, uxx, atol=1e-12, rtol=0)


def test_evaluation_values_of_k_are_never_training_values():
    cfg = PINNFamilyParams(k_points=5, eval_k_points=9)  # linspace would hit the middle node
    ks, nodes = family.unseen_k(cfg), family.chebyshev(5, 0.25, 3.0)
    assert len(ks) == 9 and ks.min() > 0.25 and ks.max() < 3.0
    assert np.abs(ks[:, None] - nodes[None, :]).min() > 1e-3
    assert nodes[0] == 0.25 and nodes[-1] == 3.0


def test_a_small_family_fits_the_closed_form_on_unseen_k():
    cfg = PINNFamilyParams(**SMALL)
    torch.manual_seed(0)
    result = family.train(cfg)
    errors = family.errors_by_k(result.net, family.unseen_k(cfg), cfg.eval_x_points)
    assert errors.max() < 1e-3
    assert set(result.phases) == {"adam", "lbfgs", "lm"} and result.loss[-1] < 1e-6


def test_errors_by_k_measure_against_the_closed_form():
    net = _net()
    ks = np.array([0.5, 2.0])
    x = problem.grid(50, torch.float64)
    want = [
        float((net(x, torch.full_like(x, k)) - problem.exact_solution_k(x, k)).abs().max())
        for k in ks
    ]
    assert_close(family.errors_by_k(net, ks, 50), np.array(want), atol=0, rtol=0)


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"k_min": 3.0, "k_max": 2.0}, "0 < k_min < k_max < 4"),
        ({"k_max": 4.0}, "0 < k_min < k_max < 4"),
        ({"k_min": 0.0}, "0 < k_min < k_max < 4"),
        ({"eval_k_points": 0}, "pinn_family.eval_k_points must be > 0"),
        ({"hidden_sizes": [0]}, "pinn_family.hidden_sizes must be layer widths"),
    ],
)
def test_bad_family_params_are_one_line(values, words):
    import yaml

    raw = {**yaml.safe_load((REPO / "params.yaml").read_text()), "pinn_family": values}
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    line = str(err.value)
    assert line.startswith("params.yaml: ") and words in line and len(line.splitlines()) == 1


def test_a_saved_family_reloads_the_same(tmp_path):
    net = _net()
    family.save(net, tmp_path / "f.pt")
    back = family.load(tmp_path / "f.pt")
    x = problem.grid(11, torch.float64)
    k = torch.full_like(x, 2.0)
    with torch.no_grad():
        assert torch.equal(back(x, k), net(x, k))


def _tamper(tmp_path, change) -> str:
    net = _net()
    blob = {"state_dict": net.state_dict(), "config": net.config()}
    change(blob)
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(AppliedTorchError) as err:
        family.load(tmp_path / "bad.pt")
    assert len(str(err.value).splitlines()) == 1
    return str(err.value)


def test_a_hostile_model_file_is_one_line(tmp_path):
    def nan(b):
        b["state_dict"]["body.0.weight"][0, 0] = math.nan

    def shape(b):
        b["state_dict"]["body.0.weight"] = torch.zeros(3, 3, dtype=torch.float64)

    def k_range(b):
        b["config"]["k_max"] = 5.0

    def widths(b):
        b["config"]["hidden_sizes"] = [10**9]

    assert "not finite" in _tamper(tmp_path, nan)
    assert "do not match" in _tamper(tmp_path, shape)
    assert "k range" in _tamper(tmp_path, k_range)
    assert "widths" in _tamper(tmp_path, widths)
    assert "config" in _tamper(tmp_path, lambda b: b.pop("config"))
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(AppliedTorchError, match="not a pinn_family model"):
        family.load(tmp_path / "text.pt")


def test_the_cli_imports_no_torch_and_answers_one_line_per_x(tmp_path):
    probe = "import sys, appliedtorch.pinn.family_cli; print('torch' in sys.modules)"
    out = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr
    family.save(_net(), tmp_path / "f.pt")
    cli = ["-m", "appliedtorch.pinn.family_cli", "--model", str(tmp_path / "f.pt")]
    proc = subprocess.run(
        [PYTHON, *cli, "--k", "2.0", "--x", "0", "0.5", "1.5707963267948966"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split() == ["x", "u", "exact", "error"] and len(rows) == 3
    assert [float(v) for v in rows[0].split()[:2]] == [0.0, 0.0]
    assert float(rows[2].split()[1]) == pytest.approx(1.0, abs=1e-15)
    bad = subprocess.run([PYTHON, *cli, "--k", "3.5"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines() == ["error: k must be in the trained range [0.25, 3.0]"]


@pytest.mark.slow
def test_stage_writes_model_reports_and_the_error_by_k(tmp_path, params_file, tracking_uri):
    params = params_file({"pinn_family": SMALL})
    model, reports = tmp_path / "models" / "pinn_family.pt", tmp_path / "reports"
    args = ("--params", params, "--model", model, "--reports", reports)
    proc = run_script("stages/pinn_family.py", *args)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((reports / "metrics.json").read_text())
    assert set(metrics) == {"max_error_digits", "seconds"}  # the headline
    details = json.loads((reports / "details.json").read_text())
    metrics |= details
    assert metrics["max_abs_error"] < 1e-2 and details["eval_k_points"] == 40  # seed 42
    assert metrics["max_error_digits"] == pytest.approx(-math.log10(metrics["max_abs_error"]))
    assert details["min_distance_to_training_k"] > 0 and details["cpu_seconds"] > 0
    table = np.loadtxt(reports / "error_by_k.csv", delimiter=",", skiprows=1)
    assert table.shape == (40, 2) and table[:, 1].max() == metrics["max_abs_error"]
    for name in ("error_by_k.png", "solutions.png", "loss.png"):
        assert (reports / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert family.load(model).k_max == 3.0
