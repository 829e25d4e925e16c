"""The MLflow UI and reports/index.html checked as a person would: rendered in headless Chromium.

After a small `dvc repro` of the whole pipeline in a temporary git+DVC workspace, `mlflow server`
serves the workspace's database on 127.0.0.1 and Debian's `chromium` loads the React UI with
`--dump-dom` after its scripts ran (`--virtual-time-budget`), plus `--screenshot`. The checks
read the rendered text; the screenshots are kept in .test-artifacts/browser/ for a person.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml

from appliedtorch.report import page as report
from helpers import BIN, REPO
from helpers.repo import copy_workspace, run
from helpers.servers import serve_mlflow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = REPO / ".test-artifacts" / "browser"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Debian's `chromium` is not installed (`apt-get install -y chromium`; .ci/run does)",
    ),
]

# experiment -> (DVC stage, a metric the UI must show for its run)
EXPERIMENTS = {
    "mnist-mlp": ("train_mlp", "test_accuracy"),
    "cifar10-cnn": ("train_cnn", "test_accuracy"),
    "pinn-ode": ("pinn", "max_abs_error"),
    "math-demos": ("math_demos", "max_error"),
}

# Chromium with no network: every host name fails to resolve and any proxy use is refused.
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9")

# Smaller than test_pipeline's: this test is about what the pages show, not about accuracy.
SWEEP = (0.01, 0.1)


class Chromium:
    """Headless Chromium, a fresh profile per page load."""

    def __init__(self, profiles: Path):
        self.profiles = profiles
        self.count = 0

    def dom(
        self,
        url: str,
        screenshot: str,
        size: tuple[int, int],
        budget_ms: int,
        flags: tuple[str, ...] = (),
    ) -> str:
        """Load `url`, let its scripts run for `budget_ms` of virtual time; screenshot; the DOM.
        `flags` go to Chromium too (OFFLINE: no network)."""
        self.count += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={self.profiles / f'profile{self.count}'}",
            f"--window-size={size[0]},{size[1]}",
            # Virtual time runs the page's timers and waits for its fetches, then dumps the DOM.
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={ARTIFACTS / screenshot}",
            "--dump-dom",
            *flags,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (ARTIFACTS / screenshot).stat().st_size > 10_000, "blank screenshot"
        return proc.stdout

    def text(
        self,
        url: str,
        screenshot: str,
        expect: list[str],
        size: tuple[int, int] = (1600, 1000),
        budget_ms: int = 15000,
    ) -> str:
        """The page's visible text once all of `expect` shows, loading again (at most twice
        more, with more time) while the UI is still fetching; the caller asserts on it."""
        for attempt in range(3):
            text = visible_text(self.dom(url, screenshot, size, budget_ms * (attempt + 1)))
            if all(e in text for e in expect):
                break
        return text


def visible_text(dom: str) -> str:
    """The page's text as a person reads it: no scripts, styles or tags; spaces collapsed."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, built_pipeline):
    """A copy of the session's built workspace (every stage and `report` run, tracked in its own
    mlflow.db through the relative path in params.yaml), with a learning-rate sweep on top."""
    ws, env = copy_workspace(built_pipeline, tmp_path_factory.mktemp("browser"))
    dvc = str(BIN / "dvc")
    # With the baseline, three comparable mnist-mlp runs. Named as DVC names a queued grid's
    # experiments (`-n lr-sweep`), so the runs share `sweep=lr-sweep`.
    for i, lr in enumerate(SWEEP, 1):
        run([dvc, "exp", "run", "-n", f"lr-sweep-{i}", "-S", f"mlp.lr={lr}", "train_mlp"], ws, env)
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    return ws


def test_mlflow_ui_shows_the_experiments_runs_and_metrics(pipeline, tmp_path):
    db = f"sqlite:///{pipeline / 'mlflow.db'}"
    client = mlflow.MlflowClient(db)
    exps = {name: client.get_experiment_by_name(name) for name in EXPERIMENTS}
    runs, sweep = repro_and_sweep_runs(client, exps)
    assert sorted(float(r.data.params["mlp.lr"]) for r in sweep) == sorted(SWEEP)
    assert {r.data.tags["sweep"] for r in sweep} == {"lr-sweep"}
    for exp in exps.values():  # MLflow's marker of a model-training (not GenAI) experiment
        assert exp.tags["mlflow.experimentKind"] == "custom_model_development"

    browser = Chromium(tmp_path)
    with serve_mlflow(db, pipeline / "mlartifacts", tmp_path / "server.log") as ui:
        text = browser.text(f"{ui}/#/experiments", "01-experiments.png", list(EXPERIMENTS))
        for name in EXPERIMENTS:
            assert name in text, f"experiment {name} is not listed: {text[:3000]}"
        for i, (name, (stage, metric)) in enumerate(EXPERIMENTS.items(), 2):
            shot = f"0{i}-run-{name}.png"
            check_run_page(browser, ui, name, runs[name], stage=stage, metric=metric, shot=shot)
        check_system_metrics_tab(browser, ui, runs["mnist-mlp"])
        for name in ("mnist-mlp", "pinn-ode"):
            named = [runs[name].info.run_name]
            named += [r.info.run_name for r in sweep if name == "mnist-mlp"]
            check_experiment_page(browser, ui, exps[name], named)
        check_comparison_view(browser, ui, exps["mnist-mlp"], [runs["mnist-mlp"], *sweep])


def repro_and_sweep_runs(client, exps: dict) -> tuple[dict, list]:
    """({experiment: its one `dvc repro` run}, the sweep's runs: those with `dvc.exp_name`)."""
    runs, sweep = {}, []
    for name, exp in exps.items():
        for r in client.search_runs([exp.experiment_id]):
            if "dvc.exp_name" in r.data.tags:
                sweep.append(r)
            else:
                assert name not in runs, f"{name}: more than one `dvc repro` run"
                runs[name] = r
    return runs, sweep


def check_run_page(browser, ui: str, name: str, r, *, stage: str, metric: str, shot: str) -> None:
    """Experiment `name`'s run `r` on its own page: status, metrics (a table of all of them) and
    lineage tags."""
    must = [
        r.info.run_name,
        r.info.run_id,
        "Finished",
        f"Metrics ({len(r.data.metrics)})",
        metric,
        f"dvc.stage : {stage}",
        f"git.commit : {r.data.tags['git.commit']}",
        f"params.md5 : {r.data.tags['params.md5']}",
    ]
    trains = name in ("mnist-mlp", "cifar10-cnn")
    if trains:
        data_tag = next(k for k in r.data.tags if k.startswith("data.") and k != "data.source")
        md5, dataset = r.data.tags[data_tag], data_tag.split(".")[1]
        must += [f"{data_tag} : {md5}", "data.source : synthetic"]
        # The datasets it read (not "Datasets None") and its system metrics.
        must += [f"Datasets {dataset}-train ({md5}) training +1"]
        system = sorted(k for k in r.data.metrics if k.startswith("system/"))
        assert "system/cpu_utilization_percentage" in system, sorted(r.data.metrics)
        must += [f"System metrics ({len(system)})", "system/cpu_utilization_percentage"]
    url = f"{ui}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
    text = browser.text(url, shot, must, size=(1600, 2600))
    missing = [m for m in must if m not in text]
    assert not missing, f"{name}: the run page does not show {missing}: {text[:3000]}"
    if trains:
        assert "Datasets None" not in text


def check_system_metrics_tab(browser, ui: str, r) -> None:
    """A training run's System metrics tab: one chart per metric."""
    url = f"{ui}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}/system-metrics"
    system = [k for k in r.data.metrics if k.startswith("system/")]
    must = [f"System metrics ({len(system)})", "Add chart"]
    text = browser.text(url, "06-mnist-mlp-system-metrics.png", must, size=(1600, 1400))
    assert all(m in text for m in must), text[:3000]


def check_experiment_page(browser, ui: str, exp, named: list[str]) -> None:
    """An experiment opens on its training runs (the runs table, datasets, the Runs tab), not
    on the GenAI overview of traces, at the address README gives."""
    name = exp.name
    url = f"{ui}/#/experiments/{exp.experiment_id}?workflowType=machine_learning"
    must = ["Runs", "Run Name", "Created", *named, f"{len(named)} matching run"]
    if name == "mnist-mlp":
        must += ["Dataset", "mnist-train"]
    text = browser.text(url, f"07-experiment-{name}.png", must, size=(1600, 1000))
    missing = [m for m in must if m not in text]
    assert not missing, f"{name}: the experiment page does not show {missing}: {text[:3000]}"
    for genai in ("Token Usage", "Tokens per Trace", "Cost Breakdown", "Latency"):
        assert genai not in text, f"{name} opened on the GenAI overview: {text[:3000]}"


def check_comparison_view(browser, ui: str, exp, runs: list) -> None:
    """The sweep in the comparison view: three runs and a chart per metric."""
    url = f"{ui}/#/experiments/{exp.experiment_id}/runs?compareRunsMode=CHART"
    must = [r.info.run_name for r in runs]
    metrics = runs[0].data.metrics
    system = [k for k in metrics if k.startswith("system/")]
    must += [f"Model metrics ({len(metrics) - len(system)})", f"System metrics ({len(system)})"]
    must += ["3 matching runs"]
    text = browser.text(url, "08-mnist-mlp-charts.png", must, size=(1600, 1400))
    assert all(m in text for m in must), text[:3000]


def test_report_page_renders_from_disk(pipeline, tmp_path):
    client = mlflow.MlflowClient(f"sqlite:///{pipeline / 'mlflow.db'}")
    # The report was made by `dvc repro`, before the sweep: it names the baseline runs.
    run_ids = [
        r.info.run_id
        for name in EXPERIMENTS
        for r in client.search_runs([client.get_experiment_by_name(name).experiment_id])
        if "dvc.exp_name" not in r.data.tags
    ]
    assert len(run_ids) == len(EXPERIMENTS)
    page = (pipeline / "reports" / "index.html").resolve()
    dom = Chromium(tmp_path).dom(page.as_uri(), "09-report.png", size=(1300, 9000), budget_ms=2000)
    text = visible_text(dom)
    assert "SYNTHETIC DATA. The MNIST and CIFAR-10 results" in text
    assert "not run yet" not in text.lower() and "not produced yet" not in text
    for run_id in run_ids:
        assert run_id in text
    assert "max_abs_error" in text and "test_accuracy" in text and "max_error" in text
    # every figure the report's sections name (the classifiers' 4 each, the three PINN problems',
    # the demos' 2), inlined
    figures = sum(len(s.figures) for s in report.SECTIONS)
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == figures >= 19


def test_dvc_plots_diff_shows_two_experiments_confusion_matrices_side_by_side(pipeline, tmp_path):
    """`dvc plots diff <expA> <expB>`: each experiment's own image, both on one page."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    target = "reports/mlp/confusion_matrix.png"
    out = tmp_path / "diff"
    cmd = [str(BIN / "dvc"), "plots", "diff", "lr-sweep-1", "lr-sweep-2", "--targets", target]
    run([*cmd, "-o", str(out)], pipeline, env)
    dom = Chromium(tmp_path).dom(
        (out / "index.html").as_uri(), "10-dvc-plots-diff.png", size=(2100, 1000), budget_ms=2000
    )
    shown = re.findall(r'<img[^>]*src="([^"]+)"', dom)
    assert len(shown) == 2, dom[:3000]
    text = visible_text(dom)
    assert target in text and "lr-sweep-1" in text and "lr-sweep-2" in text, text[:2000]
    # Each image is that experiment's own picture, as its dvc.lock records it (and they differ).
    for exp in ("lr-sweep-1", "lr-sweep-2"):
        src = next(src for src in shown if exp in src)
        assert (out / src).read_bytes() == cached_output(pipeline, env, exp, target)
    assert (out / shown[0]).read_bytes() != (out / shown[1]).read_bytes()


def cached_output(ws: Path, env: dict, exp: str, path: str) -> bytes:
    """The bytes of output `path` in DVC experiment `exp`: its dvc.lock's md5, from the cache."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], ws, env).stdout
    rev = next(r for r in refs.split() if r.endswith("/" + exp))  # refs/exps/<baseline>/<name>
    lock = yaml.safe_load(run(["git", "show", f"{rev}:dvc.lock"], ws, env).stdout)
    md5 = next(
        out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", []) + stage.get("plots", [])
        if out["path"] == path
    )
    return (ws / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).read_bytes()


# Added to a copy of a `dvc plots` page: once the page's scripts ran, each plot's div gets
# data-painted = how many pixels its canvases drew (Vega draws on a canvas; "none" if no canvas).
PAINT_PROBE = """<script>
setTimeout(() => {
  for (const div of document.querySelectorAll("div[id]")) {
    const canvases = div.querySelectorAll("canvas");
    let painted = canvases.length ? 0 : "none";
    for (const c of canvases) {
      if (!c.width || !c.height) continue;
      const alpha = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
      for (let i = 3; i < alpha.length; i += 4) painted += alpha[i] ? 1 : 0;
    }
    div.setAttribute("data-painted", painted);
  }
}, 3000);
</script>
"""


def painted_plots(browser: Chromium, page: Path, screenshot: str) -> dict[str, str]:
    """Each plot div of a `dvc plots` page -> the pixels its charts drew, opened offline."""
    probe = page.with_name("probe.html")
    head, end, tail = page.read_text().rpartition("</body>")  # the page's own, after the scripts
    probe.write_text(head + PAINT_PROBE + end + tail)
    dom = browser.dom(probe.as_uri(), screenshot, (1600, 3000), budget_ms=8000, flags=OFFLINE)
    return dict(re.findall(r'<div id="([^"]+)"[^>]*data-painted="([^"]+)"', dom))


def test_dvc_plots_pages_draw_the_pinn_plots_offline(pipeline, tmp_path):
    """`dvc plots show` and `dvc plots diff` after `npm ci --prefix plots`, opened with the
    network off: the page carries Vega itself (plots/template.html, named in .dvc/config), so
    each PINN plot is drawn. DVC's own page, which loads Vega from a CDN, draws none."""
    template = REPO / "plots" / "template.html"
    assert template.is_file(), "plots/template.html is missing: run `npm ci --prefix plots`"
    ws = tmp_path / "ws"
    shutil.copytree(pipeline, ws, symlinks=True)
    (ws / "plots").mkdir()
    shutil.copy(template, ws / "plots" / "template.html")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    dvc = str(BIN / "dvc")
    setting = run([dvc, "config", "plots.html_template"], REPO, env).stdout.strip()
    run([dvc, "config", "plots.html_template", setting], ws, env)
    browser = Chromium(tmp_path)
    pinn = ("PINN_solution", "PINN_pointwise_error")

    run([dvc, "plots", "show", "-o", str(tmp_path / "show")], ws, env)
    run([dvc, "plots", "diff", "lr-sweep-1", "lr-sweep-2", "-o", str(tmp_path / "diff")], ws, env)
    for name in ("show", "diff"):
        page = tmp_path / name / "index.html"
        assert not re.search(r"<script[^>]*src=", page.read_text()), "a script from elsewhere"
        painted = painted_plots(browser, page, f"11-dvc-plots-{name}-offline.png")
        for plot in pinn:
            assert int(painted.get(plot, "0").replace("none", "0")) > 1000, (name, painted)

    run([dvc, "config", "--unset", "plots.html_template"], ws, env)  # DVC's own page
    run([dvc, "plots", "show", "-o", str(tmp_path / "cdn")], ws, env)
    painted = painted_plots(browser, tmp_path / "cdn" / "index.html", "12-dvc-plots-cdn.png")
    assert all(painted.get(plot) == "none" for plot in pinn), painted
