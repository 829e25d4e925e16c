"""The one-page report: every stage's key numbers, pictures and MLflow run in one HTML file.

    html = build_report(Path("reports"), runs=latest_runs([...]), commit="bb1e253...")

The page is self-contained (CSS inline, PNGs as base64 data URIs), so it opens from disk with no
server. It reads only what the stages wrote under reports/ plus the run summaries it is given;
the MLflow lookup lives in tracking.py (the only mlflow importer), called by stages/report.py.
A stage whose outputs are missing gets a "not run yet" section instead of an error.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSection:
    """How one stage appears in the report: where its outputs are and which numbers lead."""

    stage: str  # DVC stage name (`dvc repro <stage>`)
    title: str
    folder: str  # reports/<folder>/
    experiment: str  # MLflow experiment
    params_section: str  # params.yaml section the stage logs (params.md5 is computed from it)
    figures: tuple[tuple[str, str], ...]  # (file name, caption); names as in dvc.yaml
    headline: tuple[str, ...]  # metrics.json keys shown first, in this order
    dataset: str | None = None


_CLASSIFIER_FIGURES = (
    ("loss.png", "Loss and accuracy per epoch"),
    ("confusion_matrix.png", "Confusion matrix (test set)"),
    ("per_class_accuracy.png", "Per-class accuracy"),
    ("predictions.png", "Test predictions"),
)
_CLASSIFIER_HEADLINE = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "epochs",
    "train_samples",
    "test_samples",
    "train_seconds",
    "epoch_seconds",
)

SECTIONS: tuple[StageSection, ...] = (
    StageSection(
        "train_mlp",
        "MNIST: multilayer perceptron",
        "mlp",
        "mnist-mlp",
        "mlp",
        _CLASSIFIER_FIGURES,
        _CLASSIFIER_HEADLINE,
        "mnist",
    ),
    StageSection(
        "train_cnn",
        "CIFAR-10: convolutional network",
        "cnn",
        "cifar10-cnn",
        "cnn",
        _CLASSIFIER_FIGURES,
        _CLASSIFIER_HEADLINE,
        "cifar10",
    ),
    StageSection(
        "pinn",
        "PINN: u'' + u = 0 on [0, π/2], u(0) = 0, u(π/2) = 1 (exact: sin x)",
        "pinn",
        "pinn-ode",
        "pinn",
        (
            ("solution.png", "Network solution against sin x"),
            ("error.png", "Pointwise error"),
            ("loss.png", "Training loss"),
        ),
        (
            "max_abs_error",
            "l2_relative_error",
            "boundary_error",
            "final_loss",
            "adam_steps",
            "lbfgs_steps",
            "lm_steps",
            "seconds",
        ),
    ),
    StageSection(
        "math_demos",
        "Math demos, each checked against its analytic answer",
        "math",
        "math-demos",
        "math",
        (
            ("gradient_descent.png", "Gradient descent on x⁴ − 3x³ + 2"),
            ("fft_spectrum.png", "FFT amplitude spectrum"),
        ),
        (
            "max_error",
            "failed_demos",
            "gd.x",
            "gd.f",
            "gd.steps",
            "gd.converged",
            "fft.peak1_hz",
            "fft.peak1_amplitude",
            "fft.peak2_hz",
            "fft.peak2_amplitude",
            "qp.lambda",
        ),
    ),
)

# Lineage tags shown per run, in this order (data.<name>.md5 tags are added after them).
_LINEAGE = ("git.commit", "git.dirty", "dvc.exp_name", "dvc.exp_baseline", "params.md5")


@dataclass
class _Loaded:
    """One stage's outputs as read from disk."""

    section: StageSection
    metrics: dict[str, Any] | None = None
    problem: str | None = None  # why metrics are missing: "not run yet" or a parse error
    figures: dict[str, str | None] = field(default_factory=dict)  # file -> data URI or None

    @property
    def source(self) -> str | None:
        return None if self.metrics is None else self.metrics.get("data_source")


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics.json values with dotted keys (`per_class_accuracy.cat`)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def format_value(key: str, value: Any) -> str:
    """A metric for people: accuracies in percent, floats to 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if "accuracy" in key and 0.0 <= value <= 1.0:
            return f"{100 * value:.2f} %"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def png_data_uri(path: Path) -> str | None:
    """A PNG file as a `data:` URI, or None when the file is missing or not a PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        log.warning("%s is not a PNG; left out of the report", path)
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def load_section(reports_dir: Path, section: StageSection) -> _Loaded:
    """Read a stage's metrics.json and figures; never raises for missing or broken files."""
    folder = reports_dir / section.folder
    loaded = _Loaded(section)
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("top level is not a JSON object")
        loaded.metrics = metrics
    except FileNotFoundError:
        loaded.problem = "not run yet"
    except (OSError, ValueError) as exc:
        loaded.problem = f"{path} is unreadable ({exc})"
        log.warning("%s", loaded.problem)
    loaded.figures = {name: png_data_uri(folder / name) for name, _ in section.figures}
    return loaded


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    """A two-column HTML table through pandas (which escapes the cells)."""
    frame = pd.DataFrame(rows, columns=list(header))
    return frame.to_html(index=False, escape=True, border=0, classes="grid")


def _key_numbers(loaded: _Loaded) -> tuple[str, str]:
    """(key-numbers table, all-metrics table) for a stage that has metrics."""
    flat = flatten(loaded.metrics or {})
    flat.pop("data_source", None)  # shown in the section header
    keys = [k for k in loaded.section.headline if k in flat] or list(flat)
    key_rows = [(k, format_value(k, flat[k])) for k in keys]
    all_rows = [(k, format_value(k, v)) for k, v in sorted(flat.items())]
    return _table(key_rows, ("metric", "value")), _table(all_rows, ("metric", "value"))


def _run_link(run: Mapping[str, Any], ui_base: str | None) -> str:
    """The run id, linked to the MLflow UI page of the run when a UI address is known."""
    run_id = html.escape(run["run_id"])
    if not ui_base:
        return f"<code>{run_id}</code>"
    url = f"{ui_base.rstrip('/')}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
    url += "?workflowType=machine_learning"  # MLflow 3's UI otherwise starts in its GenAI mode
    return f'<a href="{html.escape(url)}"><code>{run_id}</code></a>'


def _lineage_table(run: Mapping[str, Any]) -> str:
    tags = run.get("tags", {})
    keys = [k for k in _LINEAGE if k in tags]
    keys += sorted(k for k in tags if k.startswith("data."))
    rows = [("run name", str(run.get("run_name", ""))), ("run id", str(run["run_id"]))]
    rows += [(k, str(tags[k])) for k in keys]
    return _table(rows, ("tag", "value"))


def _section_html(loaded: _Loaded, run: Mapping[str, Any] | None, ui_base: str | None) -> str:
    s = loaded.section
    anchor = html.escape(s.stage)
    parts = [f'<section id="{anchor}">']
    badge = ""
    if loaded.source == "synthetic" or (
        run and run.get("tags", {}).get("data.source") == "synthetic"
    ):
        badge = ' <span class="badge">SYNTHETIC DATA</span>'
    parts.append(f"<h2>{html.escape(s.title)}{badge}</h2>")
    meta = [f"stage <code>{anchor}</code>", f"experiment <code>{html.escape(s.experiment)}</code>"]
    if s.dataset:
        source = loaded.source or (run or {}).get("tags", {}).get("data.source")
        where = f" from <b>{html.escape(source)}</b>" if source else ""
        meta.append(f"data <code>{html.escape(s.dataset)}</code>{where}")
    if run:
        meta.append(f"MLflow run {_run_link(run, ui_base)}")
    parts.append(f'<p class="meta">{" · ".join(meta)}</p>')

    if loaded.metrics is None:
        what = html.escape(loaded.problem or "not run yet")
        parts.append(
            f'<p class="missing">{what.capitalize()}: run <code>dvc repro {anchor}</code>.</p>'
        )
    else:
        key_table, all_table = _key_numbers(loaded)
        parts.append(f'<div class="numbers">{key_table}</div>')
        parts.append(f"<details><summary>All metrics</summary>{all_table}</details>")
    if run is None:
        parts.append('<p class="note">No finished MLflow run found for this stage.</p>')
    else:
        if not run.get("matched", True):
            parts.append(
                '<p class="note">The newest run was made with other params than the workspace '
                "has now; it may not be the run behind these numbers.</p>"
            )
        parts.append(f"<details><summary>Lineage tags</summary>{_lineage_table(run)}</details>")

    if loaded.problem != "not run yet" or any(loaded.figures.values()):
        figs = []
        for name, caption in s.figures:
            uri = loaded.figures.get(name)
            cap = html.escape(caption)
            if uri:
                img = f'<img src="{uri}" alt="{cap}">'
            else:
                img = f'<div class="nofig">{html.escape(name)}: not produced yet</div>'
            figs.append(f"<figure>{img}<figcaption>{cap}</figcaption></figure>")
        parts.append(f'<div class="figures">{"".join(figs)}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def _summary_table(loaded: list[_Loaded], runs: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per stage: state, its lead number, data source and MLflow run id."""
    rows = []
    for item in loaded:
        s, run = item.section, runs.get(item.section.experiment)
        lead = "—"
        if item.metrics is not None:
            flat = flatten(item.metrics)
            key = next((k for k in s.headline if k in flat), None)
            if key:
                lead = f"{key} = {format_value(key, flat[key])}"
        rows.append(
            {
                "stage": s.stage,
                "state": "ok" if item.metrics is not None else (item.problem or "not run yet"),
                "key number": lead,
                "data": (item.source or "—") if s.dataset else "none (generated in the stage)",
                "MLflow run": run["run_id"] if run else "—",
                "run commit": (run or {}).get("tags", {}).get("git.commit", "—")[:12],
            }
        )
    return pd.DataFrame(rows).to_html(index=False, escape=True, border=0, classes="grid")


_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 1180px; padding: 1.5rem; color: #1d2329; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #d5dbe1; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, monospace; background: #f1f3f5;
       padding: 0 .25em; border-radius: 3px; }
.meta, .note { color: #4a5560; } .note { font-style: italic; }
.synthetic { background: #b00020; color: #fff; padding: .8rem 1rem; border-radius: 6px;
             font-size: 1.05rem; margin: 1rem 0; }
.synthetic code { background: rgba(255, 255, 255, .2); color: #fff; }
.badge { background: #b00020; color: #fff; font-size: .7em; padding: .1em .5em;
         border-radius: 4px; vertical-align: middle; }
.missing { background: #fff4e5; border-left: 4px solid #f0a030; padding: .6rem .9rem; }
table.grid { border-collapse: collapse; margin: .4rem 0 .8rem; }
table.grid th, table.grid td { border: 1px solid #d5dbe1; padding: .25rem .6rem; text-align: left; }
table.grid th { background: #f1f3f5; }
details { margin: .3rem 0; } summary { cursor: pointer; color: #1f5f99; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; }
figure { margin: 0; flex: 1 1 460px; max-width: 560px; }
figure img { width: 100%; height: auto; border: 1px solid #e3e7eb; }
figcaption { color: #4a5560; font-size: .9rem; }
.nofig { border: 1px dashed #aab4be; color: #4a5560; padding: 2rem 1rem; text-align: center; }
"""


def build_report(
    reports_dir: str | Path,
    runs: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    commit: str | None = None,
    dirty: bool | None = None,
    tracking_uri: str | None = None,
    ui_base: str | None = None,
    runs_problem: str | None = None,
    sections: tuple[StageSection, ...] = SECTIONS,
) -> str:
    """The whole report as one self-contained HTML page.

    `runs` maps an experiment name to a run summary as returned by `tracking.latest_runs`;
    `ui_base` is the MLflow UI address run ids link to; `runs_problem` says why runs are missing.
    """
    reports_dir = Path(reports_dir)
    runs = runs or {}
    loaded = [load_section(reports_dir, s) for s in sections]
    synthetic = [
        item.section.title.split(":")[0]
        for item in loaded
        if item.section.dataset
        and (
            item.source == "synthetic"
            or runs.get(item.section.experiment, {}).get("tags", {}).get("data.source")
            == "synthetic"
        )
    ]

    head = ["<h1>appliedtorch report</h1>"]
    info = []
    if commit:
        state = " (uncommitted changes)" if dirty else ""
        info.append(f"git commit <code>{html.escape(commit)}</code>{html.escape(state)}")
    if tracking_uri:
        info.append(f"MLflow tracking <code>{html.escape(tracking_uri)}</code>")
    if ui_base:
        info.append(f'MLflow UI <a href="{html.escape(ui_base)}">{html.escape(ui_base)}</a>')
    if info:
        head.append(f'<p class="meta">{" · ".join(info)}</p>')
    if synthetic:
        which = " and ".join(
            [", ".join(synthetic[:-1]), synthetic[-1]] if synthetic[1:] else synthetic
        )
        head.append(
            '<div class="synthetic" id="synthetic-warning"><b>SYNTHETIC DATA.</b> '
            f"The {html.escape(which)} results were trained and tested on generated stand-in data "
            "(<code>data.source: synthetic</code>), not on the real datasets: their accuracies "
            "say nothing about real-world performance.</div>"
        )
    if runs_problem:
        head.append(f'<p class="note">MLflow run ids unavailable: {html.escape(runs_problem)}</p>')
    head.append("<h2>Summary</h2>" + _summary_table(loaded, runs))

    body = [_section_html(item, runs.get(item.section.experiment), ui_base) for item in loaded]
    title = "appliedtorch report" + (" (SYNTHETIC DATA)" if synthetic else "")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(head + body)
        + "\n</body>\n</html>\n"
    )
