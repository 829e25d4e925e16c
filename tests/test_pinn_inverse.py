"""The inverse problem: k in u'' + k·u = 0 from observations, against the closed form and
scipy's least squares on the same data; the observations CSV as hostile input."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from appliedtorch.core.errors import DataError, ParamsError
from appliedtorch.params import parse_params
from appliedtorch.pinn import inverse, observations, problem
from appliedtorch.pinn.params import PINNInverseParams
from helpers import REPO, run_script

# A few seconds: the default recipe, shrunk.
SHORT = dict(adam_steps=150, lbfgs_steps=60, lm_steps=150)


@pytest.mark.parametrize("k", [0.25, 1.0, 2.3, 3.9])
def test_closed_form_solves_the_ode_with_both_boundary_values(k):
    x = problem.grid(101, torch.float64).requires_grad_(True)
    u = problem.exact_solution_k(x, k)
    (ux,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    (uxx,) = torch.autograd.grad(ux.sum(), x)
    scale = 1 / math.sin(math.sqrt(k) * problem.B)  # the solution's size grows as k nears 4
    assert_close(uxx + k * u, torch.zeros_like(u), atol=1e-12 * scale, rtol=0)
    assert_close(u[[0, -1]].detach().squeeze(1), torch.tensor([0.0, 1.0], dtype=torch.float64))
    xs = np.linspace(0, problem.B, 7)
    exact = problem.exact_solution_k(torch.tensor(xs), k).numpy()
    assert_close(problem.closed_form(xs, k), exact, atol=1e-15 * scale, rtol=0)


def test_observations_are_the_closed_form_plus_seeded_noise():
    x, u = observations.make(k_true=2.3, points=40, noise_sd=0.0, noise_seed=0)
    assert len(x) == 40 and x.min() > 0 and x.max() < problem.B
    assert_close(u, problem.closed_form(x, 2.3), atol=0, rtol=0)
    _, a = observations.make(2.3, 40, 0.01, 5)
    _, b = observations.make(2.3, 40, 0.01, 5)
    _, c = observations.make(2.3, 40, 0.01, 6)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.005 < np.std(a - u) < 0.02


def test_observations_csv_round_trips_every_digit(tmp_path):
    x, u = observations.make(1.0, 50, 0.01, 0)
    observations.write_csv(tmp_path / "o.csv", x, u)
    x2, u2 = observations.read_csv(tmp_path / "o.csv")
    assert np.array_equal(x, x2) and np.array_equal(u, u2)


HOSTILE = {
    "no header": ("0.1,0.2\n0.3,0.4\n", "header"),
    "three fields": ("x,u\n0.1,0.2,0.3\n0.3,0.4\n", "line 2 must hold two numbers"),
    "nan": ("x,u\n0.1,nan\n0.3,0.4\n", "line 2: u must be finite"),
    "inf": ("x,u\n0.1,0.2\ninf,0.4\n", "line 3: x must be finite"),
    "text": ("x,u\n0.1,abc\n0.3,0.4\n", "line 2: u is not a number"),
    "underscore": ("x,u\n0.1,1_0\n0.3,0.4\n", "line 2: u is not a number"),
    "x outside": ("x,u\n0.1,0.2\n2.0,0.4\n", "line 3: x = 2 is outside"),
    "u huge": ("x,u\n0.1,1e300\n0.3,0.4\n", "beyond 1e6"),
    "one row": ("x,u\n0.1,0.2\n", "1 observation(s); need 2"),
    "same x": ("x,u\n0.1,0.2\n0.1,0.3\n", "same x"),
    "empty": ("", "header"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_observations_file_is_one_line(tmp_path, case):
    text, words = HOSTILE[case]
    path = tmp_path / "o.csv"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        observations.read_csv(path)
    line = str(err.value)
    assert words in line and len(line.splitlines()) == 1 and str(path) in line


def test_observations_that_are_not_text_or_too_large_are_refused(tmp_path):
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"x,u\n\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        observations.read_csv(binary)
    big = tmp_path / "big.csv"
    big.write_text("x,u\n" + "0.1,0.2\n" * (observations.MAX_BYTES // 8 + 1))
    with pytest.raises(DataError, match="larger than"):
        observations.read_csv(big)
    with pytest.raises(DataError, match="no such"):
        observations.read_csv(tmp_path / "missing.csv")
    with pytest.raises(DataError):
        observations.read_csv(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"k_true": 4.0}, "pinn_inverse.k_true must be in (0, 4)"),
        ({"k_true": 0.0}, "pinn_inverse.k_true must be in (0, 4)"),
        ({"k_init": -1.0}, "pinn_inverse.k_init must be in (0, 4)"),
        ({"points": 1}, "pinn_inverse.points must be >= 2"),
        ({"noise_sd": -0.1}, "pinn_inverse.noise_sd must be >= 0"),
        ({"noise_sd": math.inf}, "pinn_inverse.noise_sd must be a finite number"),
        ({"noise_seed": -1}, "pinn_inverse.noise_seed must be >= 0"),
        ({"hidden_sizes": [256, 256, 256]}, "GB for Levenberg-Marquardt"),
    ],
)
def test_bad_inverse_params_are_one_line(values, words):
    raw = {**_params(), "pinn_inverse": values}
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    line = str(err.value)
    assert line.startswith("params.yaml: ") and words in line and len(line.splitlines()) == 1


def _params() -> dict:
    import yaml

    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_noise_free_data_give_k_to_1e6():
    cfg = PINNInverseParams(noise_sd=0.0, **SHORT)
    x, u = observations.make(cfg.k_true, cfg.points, 0.0, 0)
    torch.manual_seed(0)
    result = inverse.fit(cfg, x, u)
    assert abs(result.k - 1.0) <= 1e-6
    assert result.k_trace[0] != result.k and len(result.k_trace) == len(result.loss)


def test_noisy_k_matches_least_squares_and_its_standard_error():
    cfg = PINNInverseParams(k_true=2.3, noise_sd=0.01, noise_seed=3, **SHORT)
    x, u = observations.make(cfg.k_true, cfg.points, cfg.noise_sd, cfg.noise_seed)
    torch.manual_seed(0)
    result = inverse.fit(cfg, x, u)
    ls = inverse.least_squares_k(x, u, cfg.k_init)
    assert abs(result.k - ls.k) <= 1e-4
    assert result.k_standard_error == pytest.approx(ls.standard_error, rel=0.05)
    assert 1e-4 < ls.standard_error < 1e-2  # noise 0.01 on 50 points


def test_least_squares_recovers_k_from_exact_data():
    x = np.linspace(0.1, 1.5, 30)
    fit = inverse.least_squares_k(x, problem.closed_form(x, 3.1), k_init=1.0)
    assert fit.k == pytest.approx(3.1, abs=1e-10)


def test_trace_points_are_sparse_and_keep_the_last():
    points = inverse.trace_points([float(i) for i in range(1000)], max_points=50)
    assert len(points) <= 51 and points[-1] == (999, 999.0) and points[0] == (0, 0.0)


def test_stage_refuses_bad_observations_before_any_work(tmp_path, params_file):
    bad = tmp_path / "mine.csv"
    bad.write_text("x,u\n0.1,nan\n0.2,0.3\n")
    reports = tmp_path / "r"
    proc = run_script(
        "stages/pinn_inverse.py",
        "--params", params_file(), "--observations", bad, "--reports", reports,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: line 2: u must be finite (got nan)"]
    assert not reports.exists()


@pytest.mark.slow
def test_stage_fits_a_users_csv_and_logs_k_per_step(tmp_path, params_file, tracking_uri):
    params = params_file({"pinn_inverse": {"noise_sd": 0.0, **SHORT}})
    obs = tmp_path / "data" / "observations.csv"
    proc = run_script("stages/pinn_observations.py", "--params", params, "--out", obs)
    assert proc.returncode == 0, proc.stderr
    reports = tmp_path / "reports"
    proc = run_script(
        "stages/pinn_inverse.py",
        "--params", params, "--observations", obs, "--reports", reports,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((reports / "metrics.json").read_text())
    details = json.loads((reports / "details.json").read_text())
    assert details["k_error"] <= 1e-6 and details["k_difference"] <= 1e-6
    assert details["k_error_digits"] == pytest.approx(-math.log10(details["k_error"]))
    assert not set(details) & set(metrics) and len(metrics) <= 4
    for name in ("fit.png", "residual.png", "k_trace.png"):
        assert (reports / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pinn-inverse").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["dvc.stage"] == "pinn_inverse"
    history = client.get_metric_history(run.info.run_id, "k_hat")
    assert len(history) > 10 and history[-1].value == pytest.approx(metrics["k_hat"])
