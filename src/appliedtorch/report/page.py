"""The one-page report: every stage's key numbers, pictures and MLflow run in one HTML file.

    html = build_report(Path("reports"), runs=latest_runs([...]), commit="bb1e253...")

The page is self-contained (CSS inline, PNGs as base64 data URIs), so it opens from disk with no
server. It is rendered from templates/index.html.j2 with autoescaping: every value from a file or
a run is HTML-escaped. It reads only what the stages wrote under reports/ plus the run summaries
it is given; the MLflow lookup lives in `appliedtorch.tracking` (the only mlflow importer),
called by stages/report.py.
A stage whose outputs are missing gets a "not run yet" section instead of an error.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from appliedtorch.core.utils import flatten, read_regular
from appliedtorch.report.chart import accuracy_chart
from appliedtorch.report.sections import PINN_SECTIONS, StageSection

log = logging.getLogger(__name__)


_CLASSIFIER_FIGURES = (
    ("loss.png", "Loss and accuracy per epoch"),
    ("confusion_matrix.png", "Confusion matrix (test set)"),
    ("per_class_accuracy.png", "Per-class accuracy"),
    ("predictions.png", "Test predictions"),
)
_CLASSIFIER_HEADLINE = (
    "test_accuracy",
    "test_loss",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "train_loss",
    "epochs",
    "train_samples",
    "test_samples",
    "train_seconds",
    "mean_epoch_seconds",
    "compute_dtype",
    "openmp_wait",
    "autotune",
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
    *PINN_SECTIONS,
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


def sections_for(classifiers: Mapping[str, tuple[str, str]]) -> tuple[StageSection, ...]:
    """SECTIONS with each classifier on its dataset: `{"mlp": ("fashion-mnist",
    "Fashion-MNIST")}` gives the MLP section that dataset, its title and its experiment
    (fashion-mnist-mlp, as the training stage names it)."""
    out = []
    for s in SECTIONS:
        if s.params_section in classifiers:
            name, title = classifiers[s.params_section]
            kind = s.title.split(": ", 1)[1]
            experiment = f"{name}-{s.params_section}"
            s = replace(s, title=f"{title}: {kind}", experiment=experiment, dataset=name)
        out.append(s)
    return tuple(out)


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


DETAILS = ("details.json", "run.json", "per_class.json", "phases.json", "demos.json", "bvp.json")

# A stage's metrics.json is ~2 KB, nested 2 levels (per-class tables); anything far past that is
# not a stage's: a file of many MB, or nesting deep enough to exhaust Python's recursion.
MAX_METRICS_BYTES = 16 << 20
MAX_METRICS_DEPTH = 8


def read_metrics(path: Path) -> dict[str, Any]:
    """A stage's metrics.json as a dict; ValueError (or OSError) when it is not one."""
    data = read_regular(path, MAX_METRICS_BYTES)
    if len(data) > MAX_METRICS_BYTES:
        raise ValueError(f"larger than {MAX_METRICS_BYTES >> 20} MB")
    metrics = json.loads(data)
    if not isinstance(metrics, dict):
        raise ValueError("top level is not a JSON object")
    if _depth(metrics) > MAX_METRICS_DEPTH:
        raise ValueError(f"nested deeper than {MAX_METRICS_DEPTH} levels")
    return metrics


def _depth(value: Any) -> int:
    """How deeply `value` nests lists and objects, without recursion (0 for a number)."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level + 1)
            if level + 1 <= MAX_METRICS_DEPTH:  # deeper is refused anyway: stop counting there
                todo.extend(
                    (v, level + 1) for v in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


def load_section(reports_dir: Path, section: StageSection) -> _Loaded:
    """Read a stage's metrics.json and figures; never raises for missing or broken files."""
    folder = reports_dir / section.folder
    loaded = _Loaded(section)
    path = folder / "metrics.json"
    try:
        headline = read_metrics(path)
        # The details beside the headline numbers: a classifier's per_class.json, the PINN's
        # phases.json, the demos' demos.json. metrics.json wins a key both hold (a details file
        # must not hide, say, data_source: synthetic).
        loaded.metrics = {}
        for details in DETAILS:
            with contextlib.suppress(FileNotFoundError):
                path = folder / details
                loaded.metrics |= read_metrics(path)
        loaded.metrics |= headline
    except FileNotFoundError:
        loaded.problem = "not run yet"
    except (OSError, ValueError, RecursionError) as exc:
        text = " ".join(str(exc).split())[:120] or type(exc).__name__
        loaded.problem = f"{path} is unreadable ({text})"
        log.warning("%s", loaded.problem)
    loaded.figures = {name: png_data_uri(folder / name) for name, _ in section.figures}
    return loaded


def _key_numbers(loaded: _Loaded) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(key-number rows, all-metric rows) for a stage that has metrics."""
    flat = flatten(loaded.metrics or {})
    flat.pop("data_source", None)  # shown in the section header
    keys = [k for k in loaded.section.headline if k in flat] or list(flat)
    key_rows = [(k, format_value(k, flat[k])) for k in keys]
    all_rows = [(k, format_value(k, v)) for k, v in sorted(flat.items())]
    return key_rows, all_rows


# Per-class metrics (metrics.json: {"precision": {class: value}, ...}) shown as one table.
_PER_CLASS = ("precision", "recall", "f1")


def _per_class_rows(metrics: Mapping[str, Any] | None) -> list[tuple[str, ...]]:
    """One row per class: class, precision, recall, F1 (empty when the stage has none)."""
    tables = [(metrics or {}).get(name) for name in _PER_CLASS]
    if not all(isinstance(t, dict) for t in tables):
        return []
    named = list(zip(_PER_CLASS, tables, strict=True))
    return [(c, *(format_value(n, t.get(c)) for n, t in named)) for c in tables[0]]


def _lineage_rows(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    tags = run.get("tags", {})
    keys = [k for k in _LINEAGE if k in tags]
    keys += sorted(k for k in tags if k.startswith("data."))
    rows = [("run name", str(run.get("run_name", ""))), ("run id", str(run["run_id"]))]
    return rows + [(k, str(tags[k])) for k in keys]


def _synthetic(loaded: _Loaded, run: Mapping[str, Any] | None) -> bool:
    """Whether the stage's data is synthetic, by its metrics or by its run's tag."""
    return (
        loaded.source == "synthetic"
        or (run or {}).get("tags", {}).get("data.source") == "synthetic"
    )


def _section(loaded: _Loaded, run: Mapping[str, Any] | None, ui_base: str | None) -> dict:
    """What the template shows for one stage."""
    s = loaded.section
    key_rows, all_rows = _key_numbers(loaded) if loaded.metrics is not None else (None, None)
    run_url = None
    if run and ui_base:
        run_url = f"{ui_base.rstrip('/')}/#/experiments/{run['experiment_id']}/runs/{run['run_id']}"
        run_url += "?workflowType=machine_learning"  # MLflow 3's UI otherwise starts in GenAI mode
    show_figures = loaded.problem != "not run yet" or any(loaded.figures.values())
    return {
        "stage": s.stage,
        "title": s.title,
        "experiment": s.experiment,
        "dataset": s.dataset,
        "source": loaded.source or (run or {}).get("tags", {}).get("data.source"),
        "synthetic": _synthetic(loaded, run),
        "run": run,
        "run_url": run_url,
        "problem": loaded.problem or "not run yet",
        "key_rows": key_rows,
        "all_rows": all_rows,
        "per_class_rows": _per_class_rows(loaded.metrics),
        "lineage_rows": _lineage_rows(run) if run else [],
        "figures": [(n, c, loaded.figures.get(n)) for n, c in s.figures] if show_figures else [],
    }


def _params_rows(
    params: Mapping[str, Mapping[str, Any]] | None, section: StageSection
) -> list[tuple[str, str]]:
    """The stage's params as (key, value) rows, in params.yaml's order (empty when not given)."""
    values = (params or {}).get(section.params_section) or {}
    return [(k, "null" if v is None else format_value(k, v)) for k, v in values.items()]


def _summary_row(item: _Loaded, run: Mapping[str, Any] | None) -> tuple[str, ...]:
    """stage, state, its lead number, data source, MLflow run id and the run's commit."""
    s = item.section
    lead = "—"
    if item.metrics is not None:
        flat = flatten(item.metrics)
        key = next((k for k in s.headline if k in flat), None)
        if key:
            lead = f"{key} = {format_value(key, flat[key])}"
    return (
        s.stage,
        "ok" if item.metrics is not None else (item.problem or "not run yet"),
        lead,
        (item.source or "—") if s.dataset else "none (generated in the stage)",
        run["run_id"] if run else "—",
        (run or {}).get("tags", {}).get("git.commit", "—")[:12],
    )


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
    params: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """The whole report as one self-contained HTML page.

    `runs` maps an experiment name to a run summary as returned by `tracking.latest_runs`;
    `ui_base` is the MLflow UI address run ids link to; `runs_problem` says why runs are missing;
    `params` maps a params section to the flat params its stage ran with (`run_params`).
    """
    reports_dir = Path(reports_dir)
    runs = runs or {}
    loaded = [(load_section(reports_dir, s), runs.get(s.experiment)) for s in sections]
    synthetic = [
        item.section.title.split(":")[0]
        for item, run in loaded
        if item.section.dataset and _synthetic(item, run)
    ]
    return _template().render(
        commit=commit,
        dirty=dirty,
        tracking_uri=tracking_uri,
        ui_base=ui_base,
        synthetic=" and ".join(
            [", ".join(synthetic[:-1]), synthetic[-1]] if synthetic[1:] else synthetic
        ),
        runs_problem=runs_problem,
        summary=[_summary_row(item, run) for item, run in loaded],
        accuracy_chart=accuracy_chart(
            [
                (_chart_label(item.section), item.metrics or {})
                for item, _ in loaded
                if item.section.dataset
            ]
        ),
        sections=[
            {**_section(item, run, ui_base), "params_rows": _params_rows(params, item.section)}
            for item, run in loaded
        ],
    )


def _chart_label(section: StageSection) -> str:
    """A classifier's row in the accuracy chart, by net and dataset (`MLP on Fashion-MNIST`): both
    nets may train on the same dataset."""
    return f"{section.params_section.upper()} on {section.title.split(':')[0]}"


@functools.cache
def _template() -> jinja2.Template:
    """templates/index.html.j2, with every value HTML-escaped unless marked safe."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("appliedtorch.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("index.html.j2")
