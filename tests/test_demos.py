"""Math demos against their analytic answers, and the `math_demos` stage end to end."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import yaml
from torch.testing import assert_close

from appliedtorch.core.errors import DivergenceError, ParamsError
from appliedtorch.demos import checks as demos
from appliedtorch.demos.params import MathParams
from appliedtorch.params import Params, parse_params
from helpers import REPO, run_script

F64 = torch.float64
DEMOS = (
    "tensors",
    "gradients",
    "vjp",
    "gd",
    "solve",
    "eig",
    "svd",
    "inverse",
    "fft",
    "cubic",
    "qp",
    "device",
)


def close(computed: list[float], expected: list[float], atol: float) -> None:
    """assert_close on float64 lists with an absolute tolerance only."""
    assert_close(
        torch.tensor(computed, dtype=F64), torch.tensor(expected, dtype=F64), atol=atol, rtol=0
    )


def test_tensors_numpy_views_share_memory_and_copies_do_not():
    r = demos.tensors_demo()
    close(r.computed["matvec"], [3.0, 12.0], atol=0)
    close(r.computed["broadcast"], [10.0, 21.0, 32.0, 13.0, 24.0, 35.0], atol=0)
    close(r.computed["numpy_after_torch_add"], [2.0] * 3, atol=0)  # t.add_(1) reached the view
    close(r.computed["torch_after_numpy_mul"], [3.0] * 3, atol=0)  # arr *= 3 reached the tensor
    close(r.computed["copy_after_numpy_add"], [3.0] * 3, atol=0)  # torch.tensor copied
    assert r.error == 0 and r.ok


def test_gradients_of_x2y_plus_y_plus_2_at_2_3():
    r = demos.gradients_demo()
    close(r.computed["grad"], [12.0, 5.0], atol=1e-12)
    close(r.computed["f"], [17.0], atol=1e-12)
    assert r.error < 1e-12


def test_vector_jacobian_product_at_1_2():
    r = demos.vjp_demo()
    close(r.computed["vjp"], [4.0, 2.0], atol=1e-12)
    assert r.error < 1e-12


def test_gradient_descent_reaches_nine_quarters():
    cfg = MathParams()
    r = demos.gradient_descent_demo(cfg)
    close(r.computed["x"], [9 / 4], atol=1e-6)
    close(r.computed["f"], [-6.54296875], atol=1e-9)
    assert r.details["converged"] and 0 < r.details["steps"] < cfg.gd_steps
    assert r.details["path"][0] == cfg.gd_start and len(r.details["path"]) == r.details["steps"] + 1
    assert r.details["warnings"] == []


def test_gradient_descent_warns_on_stationary_start(caplog):
    """The tutorial's start x = 0 has f'(0) = 0: descent must not move, and must say so."""
    with caplog.at_level(logging.WARNING, logger="appliedtorch.demos.checks"):
        r = demos.gradient_descent_demo(MathParams(gd_start=0.0))
    assert any("stationary point x0 = 0" in m for m in caplog.messages)
    assert r.details["warnings"] and r.details["steps"] == 0
    close(r.computed["x"], [0.0], atol=0)
    assert r.error == pytest.approx(6.54296875 + 2) and not r.ok  # |f(0) - f*| > |0 - 9/4|


def test_gradient_descent_starting_at_the_minimum_does_not_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="appliedtorch.demos.checks"):
        r = demos.gradient_descent_demo(MathParams(gd_start=2.25))
    assert not caplog.messages and r.details["steps"] == 0 and r.error == 0


def test_gradient_descent_divergence_raises():
    with pytest.raises(DivergenceError, match="lower math.gd_lr"):
        demos.gradient_descent(3.0, lr=1.0, max_steps=1000, tol=1e-10)


def test_linalg_solve_eig_svd_inverse():
    root5 = math.sqrt(5)
    solve, eig, svd, inverse = (
        demos.solve_demo(),
        demos.eig_demo(),
        demos.svd_demo(),
        demos.inverse_demo(),
    )
    close(solve.computed["x"], [2.0, 3.0], atol=1e-12)
    close(eig.computed["eigenvalues"], [(5 - root5) / 2, (5 + root5) / 2], atol=1e-12)
    close(svd.computed["singular_values"], [(5 + root5) / 2, (5 - root5) / 2], atol=1e-12)
    close(svd.computed["reconstruction"], [0.0] * 4, atol=1e-12)
    close(inverse.computed["inverse"], [0.4, -0.2, -0.2, 0.6], atol=1e-12)
    close(inverse.computed["residual"], [0.0] * 4, atol=1e-12)
    assert max(r.error for r in (solve, eig, svd, inverse)) < 1e-12


@pytest.mark.parametrize(("sample_rate", "duration"), [(100.0, 1.0), (64.0, 2.0), (1000.0, 0.2)])
def test_fft_finds_5_and_10_hz_with_amplitudes_1_and_half(sample_rate, duration):
    r = demos.fft_demo(sample_rate, duration)
    close(r.computed["peak_hz"], [5.0, 10.0], atol=1e-12)
    close(r.computed["amplitude"], [1.0, 0.5], atol=1e-12)
    close(r.computed["leakage"], [0.0], atol=1e-12)
    assert r.details["samples"] == round(sample_rate * duration)
    assert r.details["freqs"][1] == pytest.approx(1 / duration)  # bin spacing fs / N


def test_fft_window_without_whole_cycles_warns_and_shows_leakage(caplog):
    with caplog.at_level(logging.WARNING, logger="appliedtorch.demos.checks"):
        r = demos.fft_demo(100.0, 1.05)
    assert any("leakage" in m for m in caplog.messages)
    assert r.error > 1e-3


def test_cubic_function_values_and_gradcheck():
    r = demos.cubic_demo()
    x = torch.linspace(-2, 2, 9, dtype=F64)
    close(r.computed["forward"], (x**3).tolist(), atol=1e-12)
    close(r.computed["grad"], (3 * x**2).tolist(), atol=1e-12)
    assert r.computed["gradcheck"] == [1.0, 1.0]
    probe = torch.randn(
        6, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True
    )
    assert torch.autograd.gradcheck(demos.Cubic.apply, (probe,), eps=1e-6, atol=1e-8)


def test_qp_kkt_solution():
    r = demos.qp_demo()
    close(r.computed["x"], [2 / 3, 1 / 3], atol=1e-12)
    close(r.computed["lambda"], [-7 / 3], atol=1e-12)
    close(r.computed["objective"], [5 / 3], atol=1e-12)
    assert r.error < 1e-12


def test_device_demo_on_cpu():
    r = demos.device_demo("cpu")
    assert r.details["device"] == "cpu" and r.error == 0


def test_run_all_and_summary_metrics():
    results = demos.run_all(MathParams(), device="cpu")
    names = [r.name for r in results]
    assert names == list(DEMOS)
    m = demos.summary_metrics(results)
    assert {f"{n}.error" for n in names} <= m.keys()
    assert m["max_error"] == max(r.error for r in results) and m["max_error"] < 1e-6
    assert m["failed_demos"] == 0 and m["gd.converged"] == 1
    assert (m["fft.peak1_hz"], m["fft.peak2_hz"]) == (5.0, 10.0)
    assert len(demos.format_table(results).splitlines()) == len(results) + 1


def test_math_params_reject_a_sample_rate_below_nyquist():
    raw = {name: {} for name, f in Params.model_fields.items() if f.is_required()}
    raw["math"] = {"fft_sample_rate": 20.0}
    with pytest.raises(ParamsError, match=r"math\.fft_sample_rate must be > 20"):
        parse_params(raw)


@pytest.mark.slow
def test_stage_writes_reports_and_one_finished_mlflow_run(tmp_path, params_file, tracking_uri):
    import mlflow

    reports = tmp_path / "reports"
    params = params_file({"device": "cpu", "math": {"gd_steps": 500}})
    proc = run_script("stages/math_demos.py", "--params", params, "--reports", reports)
    assert proc.returncode == 0, proc.stderr
    assert "demo           error" in proc.stderr  # the table of demos is logged

    metrics = json.loads((reports / "metrics.json").read_text())
    # the headline: digits, not the error itself, which a table rounds to 0.0
    assert set(metrics) == {"max_error_digits", "failed_demos"}
    metrics |= json.loads((reports / "demos.json").read_text())
    assert metrics["max_error"] < 1e-6 and metrics["failed_demos"] == 0
    assert metrics["max_error_digits"] == pytest.approx(-math.log10(metrics["max_error"]))
    demos_json = json.loads((reports / "demos.json").read_text())
    assert demos_json["gd.x"] == pytest.approx(2.25, abs=1e-6)
    for name in DEMOS:
        assert demos_json[f"{name}.error"] <= metrics["max_error"]
    for png in ("gradient_descent.png", "fft_spectrum.png"):
        assert (reports / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("math-demos")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["max_error"] == pytest.approx(metrics["max_error"], abs=1e-15)
    assert run.data.params["math.gd_steps"] == "500" and run.data.params["device"] == "cpu"
    assert run.data.tags["dvc.stage"] == "math_demos" and run.data.tags["device.resolved"] == "cpu"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "demos.json", "gradient_descent.png", "fft_spectrum.png"} <= logged
    assert run.data.metrics["gd.x"] == pytest.approx(2.25, abs=1e-6)  # MLflow gets every number


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (1e300, r"^gradient descent cannot start at math\.gd_start = 1e\+300: f'\(x0\) overflows "
                r"float64; start nearer the minimum 9/4, e\.g\. 3\.0$"),
        (1e30, r"^gradient descent diverged at step 2 \(f'\(x\) overflows at x = 2\.56e\+264\); "
               r"lower math\.gd_lr$"),
    ],
)  # fmt: skip
def test_an_overflowing_descent_is_one_line_not_an_overflow_error(start, message):
    cfg = MathParams.model_construct(gd_start=start)  # past params' bound: the demo still copes
    with pytest.raises(DivergenceError, match=message):
        demos.gradient_descent_demo(cfg)


def test_gd_start_is_bounded_where_its_gradient_overflows():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["math"]["gd_start"] = -1e76
    with pytest.raises(ParamsError, match=r"math\.gd_start must be >= -1e\+75 \(got -1e\+76\)"):
        parse_params(raw)
    assert MathParams(gd_start=1e75).gd_start == 1e75  # f'(1e75) = 4e225 - 9e150: finite


def test_the_linalg_demos_live_in_their_module_and_run_all_runs_them():
    from appliedtorch.demos import linalg

    assert demos.solve_demo is linalg.solve_demo  # one namespace for the stage and the tests
    names = [r.name for r in demos.run_all(MathParams(), device="cpu")]
    assert {"solve", "eig", "svd", "inverse", "fft", "qp"} <= set(names) and len(names) == 12
