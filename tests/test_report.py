"""The one-page report: tables, inlined pictures, SYNTHETIC flag, run ids, missing stages, dvc.yaml."""

from __future__ import annotations

import base64
import json
import os
import re
import runpy
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from appliedtorch.core.errors import TrackingError
from appliedtorch.report import page as report
from appliedtorch.tracking import latest_runs, stage_run
from helpers import REPO

# The smallest valid PNG: 1x1, one grey pixel.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNoAAAAggCBd81ytgAAAABJRU5ErkJggg=="
)

MLP_METRICS = {
    "test_accuracy": 0.9312,
    "test_loss": 0.2345678,
    "train_loss": 0.25,
    "epochs": 2,
    "train_samples": 1000,
    "test_samples": 300,
    "macro_precision": 0.4375,
    "macro_recall": 0.475,
    "macro_f1": 0.4556,
    "train_seconds": 1.5,
    "mean_epoch_seconds": 0.75,
    "eval_seconds": 0.1,
    "data_source": "synthetic",
}
MLP_PER_CLASS = {  # per_class.json, beside the headline numbers
    "per_class_accuracy": {"<zero>": 0.95, "one": None},
    "precision": {"<zero>": 0.875, "one": 0.0},
    "recall": {"<zero>": 0.95, "one": 0.0},
    "f1": {"<zero>": 0.91111, "one": 0.0},
}


def write_stage(
    reports: Path, folder: str, metrics: dict | None, pngs: list[str], **details: dict
) -> None:
    """metrics.json, the PNGs and any details file (`per_class={...}` -> per_class.json)."""
    d = reports / folder
    d.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    for name, content in details.items():
        (d / f"{name}.json").write_text(json.dumps(content))
    for name in pngs:
        (d / name).write_bytes(PNG)


def fake_run(experiment: str, run_id: str, **tags: str) -> dict:
    return {
        "experiment": experiment,
        "experiment_id": "7",
        "run_id": run_id,
        "run_name": f"{experiment}-run",
        "status": "FINISHED",
        "matched": True,
        "tags": {"git.commit": "c0ffee" * 6 + "abcd", **tags},
    }


def test_report_shows_numbers_pictures_runs_and_flags_synthetic_data(tmp_path):
    reports = tmp_path / "reports"
    write_stage(
        reports, "mlp", MLP_METRICS, ["loss.png", "confusion_matrix.png"], per_class=MLP_PER_CLASS
    )
    write_stage(
        reports, "math", {"max_error": 4.6e-12}, ["gradient_descent.png"], demos={"gd.x": 2.25}
    )
    runs = {
        "mnist-mlp": fake_run("mnist-mlp", "a" * 32, **{"data.mnist.md5": "d41d8cd9.dir"}),
        "math-demos": fake_run("math-demos", "b" * 32),
    }
    page = report.build_report(
        reports, runs, commit="1234abcd" * 5, dirty=True, ui_base="http://127.0.0.1:5000"
    )

    assert page.count('id="synthetic-warning"') == 1
    assert "<title>appliedtorch report (SYNTHETIC DATA)</title>" in page
    assert "93.12 %" in page and "0.2346" in page and "4.6e-12" in page
    assert "1234abcd" * 5 in page and "uncommitted changes" in page
    link = "http://127.0.0.1:5000/#/experiments/7/runs/" + "a" * 32
    assert link + "?workflowType=machine_learning" in page
    assert "d41d8cd9.dir" in page  # the data hash from the run's lineage tags
    assert "&lt;zero&gt;" in page and "<zero>" not in page  # class names are escaped
    # Macro averages among the key numbers, and one per-class table (the MLP's only).
    numbers = page.split('<div class="numbers">', 1)[1].split("</div>", 1)[0]
    assert "<tr><td>macro_f1</td><td>0.4556</td></tr>" in numbers
    assert numbers.index("test_loss") < numbers.index("macro_precision") < numbers.index("epochs")
    assert page.count('class="per-class"') == 1
    table = page.split('class="per-class"', 1)[1].split("</details>", 1)[0]
    assert "<th>class</th><th>precision</th><th>recall</th><th>F1</th>" in table
    assert "<tr><td>&lt;zero&gt;</td><td>0.875</td><td>0.95</td><td>0.9111</td></tr>" in table
    assert "<tr><td>one</td><td>0</td><td>0</td><td>0</td></tr>" in table
    # Every picture is inlined, byte for byte, so the file opens from disk with no server.
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 3 and all(base64.b64decode(u) == PNG for u in uris)
    assert "predictions.png: not produced yet" in page
    assert 'src="http' not in page and "<script" not in page
    # Stages without outputs say so instead of failing.
    for stage in ("train_cnn", "pinn"):
        assert f"Not run yet: run <code>dvc repro {stage}</code>" in page


def test_report_without_any_outputs_or_runs_still_renders(tmp_path):
    page = report.build_report(tmp_path / "nothing-here", runs_problem="server down")
    assert page.count("Not run yet") == len(report.SECTIONS)
    assert "MLflow run ids unavailable: server down" in page
    assert "SYNTHETIC" not in page


def test_unreadable_metrics_are_reported_not_raised(tmp_path):
    (tmp_path / "pinn").mkdir()
    (tmp_path / "pinn" / "metrics.json").write_text("{not json")
    (tmp_path / "pinn" / "solution.png").write_text("not a png")
    page = report.build_report(tmp_path)
    assert "metrics.json is unreadable" in page
    assert "solution.png: not produced yet" in page


def test_synthetic_flag_also_comes_from_the_run_tag(tmp_path):
    runs = {"cifar10-cnn": fake_run("cifar10-cnn", "c" * 32, **{"data.source": "synthetic"})}
    page = report.build_report(tmp_path, runs)
    assert 'id="synthetic-warning"' in page and "CIFAR-10" in page


def test_classifier_sections_follow_their_dataset():
    sections = report.sections_for({"mlp": ("fashion-mnist", "Fashion-MNIST")})
    mlp = next(s for s in sections if s.params_section == "mlp")
    assert (mlp.experiment, mlp.dataset) == ("fashion-mnist-mlp", "fashion-mnist")
    assert mlp.title == "Fashion-MNIST: multilayer perceptron"
    default = report.sections_for({"mlp": ("mnist", "MNIST"), "cnn": ("cifar10", "CIFAR-10")})
    assert default == report.SECTIONS  # the defaults are the tutorial's names


def test_accuracy_chart_rows_name_the_net_and_the_dataset(tmp_path):
    """Both nets on one dataset: two rows that say which is which."""
    for folder in ("mlp", "cnn"):
        write_stage(tmp_path / "reports", folder, MLP_METRICS, [])
    sections = report.sections_for({s: ("fashion-mnist", "Fashion-MNIST") for s in ("mlp", "cnn")})
    page = report.build_report(tmp_path / "reports", {}, sections=sections)
    chart = page[page.index('<svg class="accuracy-chart"') :]
    chart = chart[: chart.index("</svg>")]
    labels = re.findall(r'<text x="4" [^>]*>([^<]+)</text>', chart)
    assert labels == ["MLP on Fashion-MNIST", "CNN on Fashion-MNIST"], labels


def test_format_value():
    assert report.format_value("test_accuracy", 0.98765) == "98.77 %"
    assert report.format_value("gd.steps", 111.0) == "111"
    assert report.format_value("x", 1 / 3) == "0.3333"
    assert report.format_value("ok", True) == "yes"
    assert report.format_value("x", None) == "—"


def test_sections_match_dvc_yaml():
    """Every picture the report shows is a declared output of its stage, in a folder `report`
    depends on."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    report_deps = set(stages["report"]["deps"])
    assert stages["report"]["outs"] == ["reports/index.html"]
    for s in report.SECTIONS:
        declared = stages[s.stage]["outs"] + stages[s.stage].get("plots", [])  # images: plots
        outs = {o if isinstance(o, str) else next(iter(o)) for o in declared}
        metrics = {m if isinstance(m, str) else next(iter(m)) for m in stages[s.stage]["metrics"]}
        assert f"reports/{s.folder}/metrics.json" in metrics
        assert f"reports/{s.folder}" in report_deps, f"report does not depend on {s.folder}"
        for name, _ in s.figures:
            path = f"reports/{s.folder}/{name}"
            assert path in outs, f"{path} is not an output of {s.stage}"


def test_latest_runs_prefers_the_run_with_the_workspace_params(tracking_uri):
    ids = {}
    for lr in (0.1, 0.2, 0.3):
        with stage_run("math-demos", "math_demos", {"math.gd_lr": lr, "seed": 1}) as run:
            ids[lr] = run.run_id
    with pytest.raises(RuntimeError), stage_run("math-demos", "math_demos", {"seed": 1}):
        raise RuntimeError("a failed run is never picked")
    client = mlflow.MlflowClient(tracking_uri)
    md5 = client.get_run(ids[0.2]).data.tags["params.md5"]

    got = latest_runs(["math-demos", "no-such-experiment"], tracking_uri)
    assert list(got) == ["math-demos"]
    assert got["math-demos"]["run_id"] == ids[0.3] and got["math-demos"]["status"] == "FINISHED"

    got = latest_runs(["math-demos"], tracking_uri, {"math-demos": {"params.md5": md5}})
    assert got["math-demos"]["run_id"] == ids[0.2] and got["math-demos"]["matched"]
    assert got["math-demos"]["tags"]["dvc.stage"] == "math_demos"

    got = latest_runs(["math-demos"], tracking_uri, {"math-demos": {"params.md5": "nope"}})
    assert got["math-demos"]["run_id"] == ids[0.3] and not got["math-demos"]["matched"]


def test_latest_runs_does_not_create_a_missing_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "absent.db"
    assert latest_runs(["math-demos"], f"sqlite:///{db}") == {}
    assert not db.exists()
    with pytest.raises(TrackingError, match="not reachable"):
        latest_runs(["math-demos"], "http://127.0.0.1:9")


def run_report_stage(monkeypatch: pytest.MonkeyPatch, *args: object) -> None:
    """Run stages/report.py in this process (the CLI itself runs under `dvc repro` in test_browser)."""
    monkeypatch.setattr(sys, "argv", ["report.py", *map(str, args)])
    runpy.run_path(str(REPO / "stages/report.py"), run_name="__main__")


def test_report_stage_writes_the_page_with_run_ids(
    tmp_path, tracking_uri, params_file, monkeypatch
):
    reports = tmp_path / "reports"
    write_stage(reports, "math", {"max_error": 1e-12}, ["gradient_descent.png", "fft_spectrum.png"])
    with stage_run("math-demos", "math_demos", {"seed": 1}) as run:
        pass
    out = reports / "index.html"
    run_report_stage(monkeypatch, "--params", params_file(), "--reports", reports, "--out", out)
    page = out.read_text()
    assert run.run_id in page
    assert page.count("data:image/png;base64,") == 2


def test_report_stage_shows_every_param_the_stages_ran_with(tmp_path, params_file, monkeypatch):
    import html

    from appliedtorch.core.params import run_params
    from appliedtorch.params import load_params

    recipe = {"arch": "resnet", "optimizer": "sgd", "nesterov": True, "scheduler": "onecycle",
              "label_smoothing": 0.2, "flip_tta": True, "warmup_epochs": 2}  # fmt: skip
    params = params_file({"cnn": recipe})
    out = tmp_path / "index.html"
    run_report_stage(monkeypatch, "--params", params, "--reports", tmp_path, "--out", out)
    page = html.unescape(out.read_text())
    for section in ("mlp", "cnn", "pinn", "math"):
        for key, value in run_params(load_params(params), section).items():
            shown = "null" if value is None else report.format_value(key, value)
            assert f"<td>{key}</td><td>{shown}</td>" in page, key
    assert (
        "<td>cnn.optimizer</td><td>sgd</td>" in page and "<td>cnn.flip_tta</td><td>yes</td>" in page
    )
    assert "<td>cnn.label_smoothing</td><td>0.2</td>" in page
    assert yaml.safe_load(Path(params).read_text())["cnn"]["arch"] == "resnet"


def test_report_stage_survives_an_unreachable_tracking_server(
    tmp_path, params_file, monkeypatch, caplog
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    out = tmp_path / "index.html"
    run_report_stage(monkeypatch, "--params", params_file(), "--reports", tmp_path, "--out", out)
    assert "MLflow run ids unavailable" in out.read_text()
    assert "not reachable" in caplog.text


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("[" * 100_000 + "]" * 100_000, "maximum recursion depth exceeded"),
        ('{"a": ' * 50 + "1" + "}" * 50, "nested deeper than 8 levels"),
        ("[1]", "top level is not a JSON object"),
    ],
)
def test_a_hostile_metrics_file_is_one_warning_and_the_page_says_so(
    content, why, tmp_path, tracking_uri, params_file, monkeypatch, caplog
):
    (tmp_path / "mlp").mkdir()
    (tmp_path / "mlp" / "metrics.json").write_text(content)
    out = tmp_path / "index.html"
    run_report_stage(monkeypatch, "--params", params_file(), "--reports", tmp_path, "--out", out)
    problems = [r.getMessage() for r in caplog.records if "metrics.json" in r.getMessage()]
    assert len(problems) == 1 and "mlp/metrics.json is unreadable" in problems[0], problems
    assert why in problems[0] and len(problems[0]) < 300
    assert "is unreadable" in out.read_text()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("a-file/index.html", r"cannot write \S+/a-file: \S+/a-file is a file, not a directory; "),
        ("a-file/deeper/index.html", r"cannot write \S+/a-file/deeper: \S+/a-file is a file"),
        ("a-dir", r"cannot write \S+/a-dir: a directory; pass a file path to --out$"),
    ],
)
def test_an_out_path_that_cannot_be_written_is_one_line_before_any_work(
    out, message, tmp_path, params_file, monkeypatch, capsys
):
    (tmp_path / "a-file").write_text("in the way\n")
    (tmp_path / "a-dir").mkdir()
    monkeypatch.setattr(report, "build_report", lambda *a, **k: pytest.fail("built the page"))
    with pytest.raises(SystemExit) as info:
        run_report_stage(monkeypatch, "--params", params_file(), "--reports", tmp_path,
                         "--out", tmp_path / out)  # fmt: skip
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert err.splitlines() == [err.strip()] and re.match(f"error: {message}", err), err
    assert (tmp_path / "a-file").read_text() == "in the way\n" and not any(
        (tmp_path / "a-dir").iterdir()
    )


def test_a_details_file_cannot_override_the_headline_or_hang_the_page(tmp_path, caplog):
    reports = tmp_path / "reports"
    # A per_class.json that claims another accuracy and real data: metrics.json wins.
    details = {**MLP_PER_CLASS, "test_accuracy": 0.999, "data_source": "upstream"}
    write_stage(reports, "mlp", MLP_METRICS, [], per_class=details)
    write_stage(reports, "pinn", {"max_abs_error": 1e-8}, [])
    os.mkfifo(reports / "pinn" / "phases.json")  # opening it to read would wait for ever
    page = report.build_report(reports)
    assert "93.12 %" in page and "99.90 %" not in page
    assert page.count('id="synthetic-warning"') == 1
    assert "phases.json is unreadable" in caplog.text and "not a regular file" in caplog.text
