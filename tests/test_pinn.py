"""The PINN for u'' + u = 0 on [0, π/2], u(0) = 0, u(π/2) = 1, checked against sin x."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from torch.testing import assert_close

from appliedtorch.pinn import classical, outputs, problem, solver
from appliedtorch.pinn import figures as plots
from appliedtorch.pinn.params import PINNParams
from helpers import run_script

# A few seconds: Adam, then L-BFGS, then Levenberg-Marquardt, all shrunk.
SHORT = dict(
    boundary="hard",
    dtype="float64",
    collocation_points=200,
    resample_every=50,
    adam_steps=150,
    lbfgs_steps=40,
    lm_steps=80,
)


def test_exact_solution_satisfies_the_ode_and_the_boundary_conditions():
    x = problem.grid(101, torch.float64)
    assert_close(
        problem.residual(problem.exact_solution, x), torch.zeros_like(x), atol=1e-12, rtol=0
    )
    assert problem.boundary_loss(problem.exact_solution, torch.float64).item() < 1e-30


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_ansatz_meets_the_boundary_conditions_exactly_untrained(dtype):
    for seed in range(3):
        torch.manual_seed(seed)
        net = problem.PINNNet([10, 10], "hard", dtype)
        u = net(torch.tensor([[problem.A], [problem.B]], dtype=dtype))
        assert_close(u, torch.tensor([[0.0], [1.0]], dtype=dtype), atol=0, rtol=0)
    soft = problem.PINNNet([10, 10], "soft", dtype)
    assert problem.boundary_loss(soft, dtype).item() > 1e-6  # a soft net has to learn them


@pytest.mark.parametrize("boundary", ["soft", "hard"])
def test_taylor_propagation_matches_autograd(boundary):
    torch.manual_seed(0)
    net = problem.PINNNet([7, 5, 3], boundary, torch.float64)
    x = problem.grid(33, torch.float64)
    u, uxx = net.value_and_uxx(x)
    assert_close(u, net(x), atol=1e-14, rtol=0)
    assert_close(uxx + u, problem.residual(net, x), atol=1e-12, rtol=0)


def test_short_solve_reaches_a_loose_bound_through_all_three_phases():
    torch.manual_seed(0)
    cfg = PINNParams(**SHORT)
    result = solver.solve(cfg)
    errors = outputs.evaluate(result.net, 1000)
    assert errors["max_abs_error"] < 1e-4, errors
    assert errors["l2_relative_error"] < 1e-4, errors
    # Each phase ran its full length: L-BFGS did not stop early (torch's default max_eval and
    # tolerances would), and every step left one loss value.
    assert result.phases == {"adam": (0, 150), "lbfgs": (150, 190), "lm": (190, 270)}
    assert len(result.loss) == 270 and all(math.isfinite(v) for v in result.loss)
    assert result.loss[-1] < 1e-3 * result.loss[149]  # L-BFGS + L-M improve on Adam by far
    assert set(result.seconds) == {"adam", "lbfgs", "lm", "total"}


def test_tutorial_recipe_is_reachable_by_params():
    torch.manual_seed(0)
    cfg = PINNParams(adam_steps=300)  # defaults: the tutorial's soft, float32, fixed grid, Adam
    assert (cfg.boundary, cfg.dtype, cfg.lbfgs_steps, cfg.lm_steps) == ("soft", "float32", 0, 0)
    result = solver.solve(cfg)
    assert next(result.net.parameters()).dtype == torch.float32
    assert list(result.phases) == ["adam"]
    assert result.loss[-1] < 0.05 * result.loss[0]
    assert outputs.evaluate(result.net)["max_abs_error"] < 0.2


def test_loss_log_points_are_sparse_and_keep_phase_ends():
    result = solver.PINNResult(
        net=problem.PINNNet(),
        loss=[float(i) for i in range(1000)],
        phases={"adam": (0, 700), "lm": (700, 1000)},
    )
    points = outputs.loss_log_points(result, max_points=50)
    steps = [s for s, _ in points]
    assert len(points) <= 52 and steps == sorted(steps)
    assert {0, 699, 999} <= set(steps)
    assert all(result.loss[s] == v for s, v in points)


def test_figures_use_log_scales_and_mark_phases():
    x = torch.linspace(0, 1, 5).numpy()
    err = plots.pinn_error_figure(x, abs(x - 0.5))
    assert err.axes[0].get_yscale() == "log"
    loss = plots.pinn_loss_figure([1.0, 0.1, 1e-3, 1e-6], {"adam": (0, 2), "lm": (2, 4)})
    ax = loss.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Adam", "Levenberg-Marquardt"]
    sol = plots.pinn_solution_figure(x, x, x)
    assert len(sol.axes[0].get_lines()) == 2


@pytest.mark.parametrize("tolerance", [1e-6, 1e-8, 1e-10])
def test_solve_bvp_meets_its_tolerance_against_sin_x(tolerance):
    bvp = classical.solve_bvp_baseline(tolerance, eval_points=1000)
    assert bvp.max_abs_error < tolerance and bvp.nodes >= 11 and bvp.seconds > 0


def test_solve_bvp_comparison_puts_the_pinn_over_solve_bvp():
    bvp = classical.BVPResult(max_abs_error=1e-10, nodes=161, seconds=0.02)
    pinn = {"max_abs_error": 1e-8, "l2_relative_error": 1e-9, "final_loss": 1e-14, "seconds": 4.0}
    got = classical.comparison(pinn, bvp)
    assert got["error_ratio_pinn_to_bvp"] == pytest.approx(100)
    assert got["time_ratio_pinn_to_bvp_seconds"] == pytest.approx(200)
    assert got["bvp_max_error_digits"] == pytest.approx(10) and got["bvp_nodes"] == 161
    assert got["final_loss_digits"] == pytest.approx(14)


def test_a_long_phase_prints_a_progress_line_in_a_log(caplog):
    """Not a terminal (pytest captures stderr): a line every `every` seconds, here every step."""
    from appliedtorch.pinn.optim import Steps

    caplog.set_level("INFO", logger="appliedtorch.pinn.optim")
    progress = Steps(3, "pinn adam", every=0.0)
    for _ in progress:
        progress.loss = 0.5
    lines = [r.getMessage() for r in caplog.records]
    assert lines and lines[0].startswith("pinn adam: step 1/3, loss 5.000e-01")


def test_stage_rejects_bad_params_before_any_work(tmp_path, params_file):
    params = params_file({"pinn": {"dtype": "float16"}})
    proc = run_script(
        "stages/pinn.py",
        "--params", params, "--model", tmp_path / "m.pt", "--reports", tmp_path / "r",
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: pinn.dtype must be 'float32' or 'float64' (got 'float16')"
    ]
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_stage_writes_reports_model_and_mlflow_run(tmp_path, params_file, tracking_uri):
    params = params_file({"pinn": SHORT})
    model, reports = tmp_path / "models" / "pinn.pt", tmp_path / "reports" / "pinn"
    proc = run_script("stages/pinn.py", "--params", params, "--model", model, "--reports", reports)
    assert proc.returncode == 0, proc.stderr

    metrics = json.loads((reports / "metrics.json").read_text())
    assert set(metrics) == {"max_error_digits", "seconds", "bvp_max_error_digits"}  # headline
    metrics |= json.loads((reports / "details.json").read_text())
    assert metrics["max_abs_error"] < 1e-4
    assert metrics["boundary_error"] == 0.0  # hard ansatz
    assert metrics["max_error_digits"] == pytest.approx(-math.log10(metrics["max_abs_error"]))
    assert metrics["max_error_digits"] > 4 and metrics["seconds"] > 0
    # solve_bvp beside it (pinn.bvp_tolerance 1e-8), and the PINN's error and time over its
    bvp = json.loads((reports / "bvp.json").read_text())
    assert metrics["bvp_max_error_digits"] > 9 and bvp["bvp_nodes"] > 10
    assert bvp["bvp_max_abs_error"] < 1e-9 and bvp["bvp_seconds"] > 0
    assert bvp["error_ratio_pinn_to_bvp"] == pytest.approx(
        metrics["max_abs_error"] / bvp["bvp_max_abs_error"]
    )
    assert bvp["time_ratio_pinn_to_bvp_seconds"] > 0 and not set(bvp) & set(metrics)
    phases = json.loads((reports / "phases.json").read_text())
    assert (phases["adam_steps"], phases["lbfgs_steps"], phases["lm_steps"]) == (150, 40, 80)
    assert not set(phases) & set(metrics)  # each number in one file
    for name in ("solution.png", "error.png", "loss.png"):
        assert (reports / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The plot data DVC draws: the solution against sin x and the pointwise error.
    table = pd.read_csv(reports / "solution.csv")
    assert list(table.columns) == ["x", "u", "exact", "abs_error"] and len(table) == 1000
    assert_close(table["exact"].to_numpy(), np.sin(table["x"].to_numpy()), atol=1e-15, rtol=0)
    assert_close(table["abs_error"].to_numpy(), (table["u"] - table["exact"]).abs().to_numpy())
    assert table["abs_error"].max() == pytest.approx(metrics["max_abs_error"], rel=1e-12)

    reloaded = outputs.evaluate(outputs.load_pinn(model), 1000)
    assert reloaded["max_abs_error"] == metrics["max_abs_error"]

    client = mlflow.MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pinn-ode").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dvc.stage"] == "pinn"
    assert run.data.params["pinn.boundary"] == "hard"
    assert run.data.metrics["max_abs_error"] == pytest.approx(metrics["max_abs_error"])
    assert "system/cpu_utilization_percentage" in run.data.metrics  # tracking.system_metrics
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) > 10 and max(m.step for m in history) == 269
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "solution.csv", "solution.png", "error.png", "loss.png"} <= artifacts
    logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    x = problem.grid(7, torch.float64)
    with torch.no_grad():
        assert_close(logged(x), outputs.load_pinn(model)(x), atol=0, rtol=0)
