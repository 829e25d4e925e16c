"""Docs as tests: every shell block in README.md and docs/*.md is run by a test, or says why not.

A fenced block of bash, sh, shell or console carries a marker on the line before it:

    <!-- doc-test: tests/test_docs.py::test_offline_quick_start -->
    <!-- not-tested: needs internet (PyPI and the dataset servers) -->

`doc-test` names the test that runs the block; a test here finds the blocks that name it with
`blocks_for(request)`, so the text as edited is what runs. `not-tested` says what a test cannot
have (internet, a cloud account, several machines). `test_every_shell_block_is_marked` fails on a
block with neither, or one that names a test that does not exist.

The runnable blocks run in a copy of the session's `built_pipeline` (a `dvc repro` on tiny
synthetic data, dvc.lock committed: the state README's offline quick start leaves), with
`npm ci --prefix plots`'s template in place. The only changes made to a block before it runs are
the ones `substitute` is given: tiny-data knobs the docs name (sizes, steps, seeds), free ports
instead of 5000/5001 and temporary directories instead of /tmp paths.

    pytest -n 0 tests/test_docs.py
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from helpers import BIN, REPO
from helpers.data import need_fashion_mnist
from helpers.repo import copy_workspace, run
from helpers.servers import free_port

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!--\s*(doc-test|not-tested):\s*(.*?)\s*-->\s*$")
TEMPLATE = REPO / "plots" / "template.html"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    marker: tuple[str, str] | None  # ("doc-test", "tests/x.py::test_y") | ("not-tested", why)
    text: str

    def where(self) -> str:
        """`docs/page.md:12`, for messages."""
        name = f"docs/{self.page.name}" if self.page.parent.name == "docs" else self.page.name
        return f"{name}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """Every fenced block of `page`, with the marker on the nearest non-blank line above it."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(above.strip())
        text = "\n".join(lines[i + 1 : end]) + "\n"
        blocks.append(Block(page, i + 1, fence.group(1), marker and marker.groups(), text))
        i = end + 1
    return blocks


def names_a_test(target: str) -> bool:
    """Whether `tests/file.py::test_name` names a test function defined at that file's top level."""
    file, _, name = target.partition("::")
    path = REPO / file
    if not (name and path.is_file() and path.parent == REPO / "tests"):
        return False
    tree = ast.parse(path.read_text())
    return any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body)


def marker_problems(pages: list[Path]) -> list[str]:
    """One line per shell block that has no marker, or names a test that does not exist."""
    problems = []
    for page in pages:
        for block in read_blocks(page):
            if block.lang not in SHELLS:
                continue
            if block.marker is None:
                problems.append(
                    f"{block.where()}: a {block.lang} block with no doc-test or "
                    "not-tested marker on the line before it"
                )
            elif block.marker[0] == "doc-test" and not names_a_test(block.marker[1]):
                problems.append(
                    f"{block.where()}: doc-test names {block.marker[1]}, which does not exist"
                )
            elif not block.marker[1]:
                problems.append(f"{block.where()}: not-tested without a reason")
    return problems


def blocks_for(request: pytest.FixtureRequest) -> list[Block]:
    """The shell blocks whose doc-test marker names the running test, in page order."""
    target = f"tests/test_docs.py::{request.node.originalname}"
    found = [b for page in PAGES for b in read_blocks(page) if b.marker == ("doc-test", target)]
    assert found, f"no block in README.md or docs/ is marked doc-test: {target}"
    return found


def substitute(text: str, changes: dict[str, str]) -> str:
    """`text` with each key replaced by its value; a key that is not there fails the test (the
    block changed, so the test must be looked at)."""
    for old, new in changes.items():
        assert old in text, f"{old!r} is no longer in the block:\n{text}"
        text = text.replace(old, new)
    return text


def run_block(text: str, cwd: Path, env: dict, timeout: float = 600) -> str:
    """Run a block with bash (-e, -u, pipefail) in its own process group; its output. The group
    is killed at the end, so a server the block started in the background cannot outlive it."""
    log = cwd.parent / f"block-{time.monotonic_ns()}.log"  # outside the repository
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", text],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text()
    assert code == 0, f"block failed ({code}):\n{text}\n--- output ---\n{output[-4000:]}"
    return output


def test_every_shell_block_is_marked():
    assert PAGES[1:], "docs/ has no pages"
    problems = marker_problems(PAGES)
    assert not problems, "\n".join(problems)


def test_the_marker_check_finds_unmarked_blocks_and_unknown_tests(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\necho unmarked\n```\n\n"
        "<!-- doc-test: tests/test_docs.py::test_no_such_test -->\n```sh\necho x\n```\n\n"
        "<!-- doc-test: tests/test_docs.py::test_every_shell_block_is_marked -->\n"
        "```console\necho fine\n```\n\n"
        "<!-- not-tested: needs internet -->\n```shell\ncurl https://example.org\n```\n\n"
        "```python\nprint('not a shell block')\n```\n"
    )
    problems = marker_problems([page])
    assert len(problems) == 2, problems
    assert "no doc-test or not-tested marker" in problems[0] and ":1:" in problems[0]
    assert "test_no_such_test, which does not exist" in problems[1]


def table_problems(page: Path) -> list[str]:
    """Markdown table rows (outside fenced blocks) whose cell count is not their header's: such a
    table does not render as one."""
    problems, header, fenced = [], None, False
    for n, line in enumerate(page.read_text().splitlines(), 1):
        fenced ^= line.startswith("```")
        row = line.strip()
        if fenced or not row.startswith("|"):
            header = None
            continue
        cells = len(re.split(r"(?<!\\)\|", row.strip("|")))
        if header is None:
            header = cells
        elif cells != header:
            name = page.relative_to(page.parents[1]) if page.parent.name == "docs" else page.name
            problems.append(f"{name}:{n}: {cells} cells in a table of {header} columns")
    return problems


def test_every_table_renders():
    problems = [p for page in PAGES for p in table_problems(page)]
    assert not problems, "\n".join(problems)


def test_the_table_check_finds_a_row_with_more_cells_than_its_header(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "| a | b |\n|---|---|\n| 1 | 2 |\n| 1 | 2 | 3 |\n\n"
        "| a \\| b | c |\n|---|---|\n\n```\n| not | a | table |\n```\n"
    )
    assert table_problems(page) == ["page.md:4: 3 cells in a table of 2 columns"]


def test_ci_runs_the_readme_commands():
    """README's test command is what .ci/run runs: each of its `&&` steps is a line of .ci/run."""
    readme = read_blocks(REPO / "README.md")
    (tests_block,) = [b for b in readme if b.text.rstrip().endswith("&& pytest")]
    ci = {line.split("#")[0].strip() for line in (REPO / ".ci" / "run").read_text().splitlines()}
    steps = [s.strip() for s in tests_block.text.strip().split("&&")]
    missing = [s for s in steps if s not in ci]
    assert not missing, f".ci/run does not run README's {missing}"


def with_plots_template(ws: Path, env: dict) -> None:
    """What `npm ci --prefix plots` and the committed .dvc/config give a clone: the template, and
    DVC told to use it."""
    assert TEMPLATE.is_file(), "plots/template.html is missing: run `npm ci --prefix plots`"
    (ws / "plots").mkdir(exist_ok=True)
    shutil.copy(TEMPLATE, ws / "plots" / "template.html")
    setting = run([str(BIN / "dvc"), "config", "plots.html_template"], REPO, env).stdout.strip()
    run([str(BIN / "dvc"), "config", "plots.html_template", setting], ws, env)


@pytest.fixture(scope="module")
def readme_ws(built_pipeline, tmp_path_factory) -> tuple[Path, dict]:
    """One copy of the built pipeline that README's blocks run in, one after another."""
    ws, env = copy_workspace(built_pipeline, tmp_path_factory.mktemp("readme"))
    with_plots_template(ws, env)
    return ws, env


@pytest.fixture
def fresh_ws(built_pipeline, tmp_path) -> tuple[Path, dict]:
    """A copy of the built pipeline of its own, for a docs page's blocks."""
    ws, env = copy_workspace(built_pipeline, tmp_path)
    with_plots_template(ws, env)
    return ws, env


def test_offline_quick_start(readme_ws, request, tmp_path):
    ws, env = readme_ws
    (block,) = blocks_for(request)
    run_block(block.text, ws, env)
    assert yaml.safe_load((ws / "params.yaml").read_text())["data"]["source"] == "synthetic"
    status = run([str(BIN / "dvc"), "status"], ws, env).stdout
    assert "up to date" in status, status

    # What README says -S does, on the project's own params.yaml (comments, nulls, flow lists):
    # the value lands in the file, the file is rewritten, `git checkout params.yaml` undoes it.
    toy = tmp_path / "toy"
    toy.mkdir()
    shutil.copy(REPO / "params.yaml", toy / "params.yaml")
    (toy / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: echo ran > out.txt\n    params: [data.source]\n    outs: [out.txt]\n"
    )
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        run(cmd, toy, env)
    run(["git", "add", "-A"], toy, env)
    run(["git", "commit", "-qm", "toy"], toy, env)
    run_block(block.text, toy, env)
    after = (toy / "params.yaml").read_text()
    assert yaml.safe_load(after)["data"]["source"] == "synthetic"
    assert "# upstream | synthetic" in after, "DVC dropped params.yaml's comments"
    assert "warmup_epochs: null" not in after and "[10, 10]" not in after
    run(["git", "checkout", "params.yaml"], toy, env)
    assert (toy / "params.yaml").read_bytes() == (REPO / "params.yaml").read_bytes()


def test_real_images_offline(readme_ws, request):
    """After the offline block (data.source: synthetic in params.yaml), README's real-images
    block trains both nets on Debian's Fashion-MNIST, as its own `-S data.source` says."""
    fashion = need_fashion_mnist()
    ws, env = readme_ws
    (block,) = blocks_for(request)
    run_block(block.text, ws, env, timeout=900)
    source = json.loads((ws / "data/raw/fashion-mnist/source.json").read_text())
    assert source["source"] == f"debian:{fashion}"
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    for arch in ("mlp", "cnn"):
        per_class = json.loads((ws / "reports" / arch / "per_class.json").read_text())
        assert "Ankle boot" in per_class["recall"], arch
        exp = client.get_experiment_by_name(f"fashion-mnist-{arch}")
        (newest,) = client.search_runs([exp.experiment_id], max_results=1)
        assert newest.data.tags["data.source"] == source["source"], arch


def test_look_at_results(readme_ws, request):
    ws, env = readme_ws
    (block,) = blocks_for(request)
    out = run_block(block.text, ws, env)
    assert "reports/mlp/metrics.json" in out and "test_accuracy" in out, out
    assert "max_error_digits" in out, out
    page = (ws / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "vega-embed" in page
    for plot in ("PINN_solution", "PINN_pointwise_error", "MLP_loss"):
        assert f'id = "{plot}"' in page, plot


def test_mlflow_ui(readme_ws, request):
    ws, env = readme_ws
    (block,) = blocks_for(request)
    port = free_port()
    text = substitute(block.text, {"--port 5000": f"--port {port}"})
    log = ws.parent / "mlflow-ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", text],
            cwd=ws,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        answer = wait_for_json(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=50", proc, log
        )
        started = psutil.Process(proc.pid).children(recursive=True)
        commands = [" ".join(command_of(p)[:4]) for p in started]  # while they run
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    names = {e["name"] for e in answer["experiments"]}
    assert {"mnist-mlp", "cifar10-cnn", "pinn-ode", "math-demos"} <= names, names
    # `mlflow ui` and its one worker: MLflow's defaults start 4 workers and a job runner's
    # processes (15 in all), which one person browsing does not need.
    assert len(started) <= 2, commands


def command_of(process: psutil.Process) -> list[str]:
    """A process's command line; [its pid] once it has ended (a zombie has none to read)."""
    try:
        return process.cmdline()
    except psutil.Error:
        return [str(process.pid)]


def wait_for_json(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> dict:
    """GET `url` until it answers JSON; fails with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return json.load(answer)
        except OSError:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)


def test_predict_after_quick_start(readme_ws, request):
    """After the blocks above it (the real-images one included, where Debian's Fashion-MNIST is
    installed), README's predict block classifies a test image of the MLP's dataset."""
    ws, env = readme_ws
    (block,) = blocks_for(request)
    out = run_block(block.text, ws, env).strip().splitlines()[-1]
    path, label, prob = out.split("\t")
    assert path == "test.png" and 0 < float(prob) <= 1, out
    dataset = yaml.safe_load((ws / "params.yaml").read_text())["mlp"]["dataset"]
    classes = json.loads((ws / "reports" / "mlp" / "per_class.json").read_text())["recall"]
    assert label in classes, (dataset, out)


def test_serve_after_quick_start(readme_ws, request):
    ws, env = readme_ws
    (block,) = blocks_for(request)
    assert (ws / "test.png").exists(), "README's predict block (run before) made test.png"
    port = str(free_port())
    out = run_block(substitute(block.text, {"5001": port}), ws, env, timeout=180)
    (line,) = [ln for ln in out.splitlines() if ln.startswith('{"predictions"')]
    answer = json.loads(line)
    (row,) = answer["predictions"]
    assert len(row) == 10 and abs(sum(row) - 1) < 1e-4, answer


def test_readme_blocks_run_in_the_order_readme_gives_them():
    """README's blocks that share one workspace (`readme_ws`) are run by tests defined in the
    order of the blocks on the page: pytest runs a file's tests in that order, so each block
    starts from the state the block above it left."""
    tree = ast.parse(Path(__file__).read_text())
    shared = [
        f.name
        for f in tree.body
        if isinstance(f, ast.FunctionDef) and any(a.arg == "readme_ws" for a in f.args.args)
    ]
    on_page = []
    for block in read_blocks(REPO / "README.md"):
        name = block.marker[1].partition("::")[2] if block.marker else ""
        if name in shared and name not in on_page:
            on_page.append(name)
    assert on_page == shared, f"README's order {on_page}, the tests' order {shared}"


def test_readmes_metrics_table_fits_200_columns_with_no_error_shown_as_zero(fresh_ws):
    ws, env = fresh_ws
    readme = [b for b in read_blocks(REPO / "README.md") if "dvc metrics show" in b.text]
    command = readme[0].text.split("dvc metrics show")[1].split("#")[0]
    wide = {**env, "COLUMNS": "1000"}  # as wide as the table is
    out = run([str(BIN / "dvc"), "metrics", "show", *command.split()], ws, wide).stdout
    lines = out.splitlines()
    widest = max(lines, key=len)
    assert len(widest) <= 200, f"{len(widest)} columns:\n{out}"
    header = re.split(r"\s{2,}", lines[0].strip())
    shown = {
        row[0]: dict(zip(header, row, strict=True))
        for row in (re.split(r"\s{2,}", ln.strip()) for ln in lines[1:])
    }
    values = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], ws, env).stdout)
    (workspace,) = values.values()
    for path, data in workspace["data"].items():
        for key, value in data["data"].items():
            if "error" in key and isinstance(value, float) and value != 0:
                assert float(shown[path][key]) != 0, f"{path}: {key} = {value} shown as 0"


def test_predict_forms(fresh_ws, request):
    ws, env = fresh_ws
    (block,) = blocks_for(request)
    lines = run_block(block.text, ws, env).strip().splitlines()
    answers = [line.split("\t") for line in lines if line.startswith("digit.png\t")]
    assert len(answers) == 3, lines
    file_model, champion, top3 = answers
    assert len(file_model) == 3 and len(top3) == 7, answers  # path, then (class, probability)s
    assert champion[1] == file_model[1], "the champion is the model file's model"


def test_params_checker(fresh_ws, request):
    ws, env = fresh_ws
    (block,) = blocks_for(request)
    run_block(block.text, ws, env)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mlp"]["lr"] = -1
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    bad = subprocess.run(
        ["bash", "-c", block.text], cwd=ws, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "mlp.lr" in bad.stderr, bad.stderr


def test_math_demos_commands(fresh_ws, request):
    ws, env = fresh_ws
    (block,) = blocks_for(request)
    out = run_block(block.text, ws, env)
    assert "max_error" in out, out


def test_pinn_commands(fresh_ws, request):
    ws, env = fresh_ws
    shutil.copytree(REPO / "benchmarks", ws / "benchmarks")
    recipe, seeds = blocks_for(request)
    run_block(substitute(recipe.text, {"pinn.adam_steps=10000": "pinn.adam_steps=300"}), ws, env)
    params = yaml.safe_load((ws / "params.yaml").read_text())["pinn"]
    assert (params["boundary"], params["dtype"], params["lm_steps"]) == ("soft", "float32", 0)
    metrics = json.loads((ws / "reports" / "pinn" / "details.json").read_text())
    assert 0 < metrics["max_abs_error"] < 1, metrics
    out = run_block(substitute(seeds.text, {"pinn_seeds.py": "pinn_seeds.py --seeds 1"}), ws, env)
    assert "seed" in out.lower(), out


def test_pinn_beyond_the_tutorial(fresh_ws, request):
    """docs/pinn.md's solve_bvp table, inverse experiment, own CSV, benchmark and family CLI."""
    ws, env = fresh_ws
    shutil.copytree(REPO / "benchmarks", ws / "benchmarks")
    bvp, experiment, own_csv, bench, cli = blocks_for(request)
    out = run_block(bvp.text, ws, env)
    assert "solve_bvp tol 1e-10" in out and "PINN (params.yaml)" in out, out
    out = run_block(experiment.text, ws, env)
    params = yaml.safe_load((ws / "params.yaml").read_text())["pinn_inverse"]
    assert (params["k_true"], params["noise_sd"]) == (2.3, 0.02)
    assert "k_hat" in out and "k_difference_digits" in out, out  # the headline it prints
    metrics = json.loads((ws / "reports" / "pinn_inverse" / "metrics.json").read_text())
    assert abs(metrics["k_hat"] - 2.3) < 0.1, metrics
    run_block(own_csv.text, ws, env)
    mine = json.loads((ws / "reports" / "my_inverse" / "metrics.json").read_text())
    mine |= json.loads((ws / "reports" / "my_inverse" / "details.json").read_text())
    assert abs(mine["k_lstsq"] - 2.25) < 1e-9 and abs(mine["k_hat"] - 2.25) < 1e-3, mine
    out = run_block(substitute(bench.text, {"--seeds 20": "--seeds 2"}), ws, env)
    assert "RMSE of k over 2 seeds" in out and "noise-free" in out, out
    out = run_block(cli.text, ws, env)
    lines = out.strip().splitlines()
    assert lines[0].split() == ["x", "u", "exact", "error"] and len(lines[1:6]) == 5, out
    assert (ws / "u_at_k_2.5.csv").read_text().count("\n") == 102


def test_failed_stage_recovery(fresh_ws, request):
    """A stage failing under `dvc repro` loses its outputs; the documented command restores them."""
    ws, env = fresh_ws
    (block,) = blocks_for(request)
    model = (ws / "models" / "mlp.pt").read_bytes()
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["mlp"]["lr"] = -1
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run([str(BIN / "dvc"), "repro", "train_mlp"], ws, env, check=False)
    assert failed.returncode != 0 and not (ws / "models" / "mlp.pt").exists()
    run_block(block.text, ws, env)
    assert (ws / "models" / "mlp.pt").read_bytes() == model


def test_dvc_remote(fresh_ws, request, tmp_path):
    ws, env = fresh_ws
    (block,) = blocks_for(request)
    remote = tmp_path / "dvc-storage"
    run_block(substitute(block.text, {"/tmp/dvc-storage": str(remote)}), ws, env)
    assert any(remote.rglob("*")), "dvc push uploaded nothing"
    status = run([str(BIN / "dvc"), "status", "--cloud"], ws, env).stdout
    assert "in sync" in status, status


@pytest.mark.slow
def test_synthetic_mirror(fresh_ws, request, tmp_path):
    ws, env = fresh_ws
    (block,) = blocks_for(request)
    mirror = tmp_path / "mirror"
    sizes = yaml.safe_load((ws / "params.yaml").read_text())["data"]["synthetic"]
    tiny = (
        f"{mirror} --mnist {sizes['mnist_train']} {sizes['mnist_test']} "
        f"--cifar10 {sizes['cifar10_train']} {sizes['cifar10_test']}"
    )
    text = substitute(block.text, {"synthetic /tmp/mirror": f"synthetic {tiny}"})
    run_block(substitute(text, {"=/tmp/mirror": f"={mirror}"}), ws, env)
    assert (mirror / "MD5SUMS").is_file()
    source = json.loads((ws / "data" / "raw" / "mnist" / "source.json").read_text())
    assert str(mirror) in json.dumps(source), source


@pytest.mark.slow
def test_extension_examples(fresh_ws, request):
    ws, env = fresh_ws
    (block,) = blocks_for(request)
    run_block(block.text, ws, env)
    cnn = yaml.safe_load((ws / "params.yaml").read_text())["cnn"]
    # The second line runs on the params the first one left (README: -S writes params.yaml).
    assert (cnn["arch"], cnn["batch_norm"], cnn["optimizer"]) == ("resnet", True, "sgd")
    metrics = json.loads((ws / "reports" / "cnn" / "details.json").read_text())
    assert metrics["epochs"] >= 1, metrics


@pytest.mark.slow
def test_seeds_commands(fresh_ws, request):
    ws, env = fresh_ws
    seeds, compare = blocks_for(request)
    run_block(substitute(seeds.text, {"mlp.seeds=5": "mlp.seeds=2"}), ws, env)
    metrics = json.loads((ws / "reports/mlp/metrics.json").read_text())
    low, high = metrics["test_accuracy_ci95_low"], metrics["test_accuracy_ci95_high"]
    assert low <= metrics["test_accuracy_mean"] <= high
    assert len((ws / "reports/mlp/members.csv").read_text().splitlines()) == 1 + 2
    status = run([str(BIN / "dvc"), "status"], ws, env).stdout
    assert "up to date" in status, f"the block's `dvc repro` left stages stale:\n{status}"

    # The comparison cut to one change of the recipe (baseline, recipe and that change), and
    # run as the text says: queue, start, and once the queue is done, the results.
    queue_line, start_line, results_line = compare.text.strip().splitlines()
    dry = run_block(queue_line + " --dry-run", ws, env)
    change = next(v for v in re.findall(r"-cmp\.(\w+) ", dry) if v not in ("baseline", "recipe"))
    run_block(substitute(queue_line, {"--seeds 3": f"--seeds 2 --only {change}"}), ws, env)
    run_block(start_line, ws, env)
    deadline = time.monotonic() + 600
    while re.search(
        r"\b(Queued|Running)\b", run([str(BIN / "dvc"), "queue", "status"], ws, env).stdout
    ):
        assert time.monotonic() < deadline, "the queue did not finish"
        time.sleep(2)
    out = run_block(results_line, ws, env)
    assert re.search(rf"{change}\s+n=2 .*%.* p=", out), out


def test_sweep(fresh_ws, request):
    ws, env = fresh_ws
    queue, compare = blocks_for(request)
    run_block(queue.text, ws, env)
    deadline = time.monotonic() + 600  # "When the queue is done": what the reader waits for
    while re.search(
        r"\b(Queued|Running)\b", run([str(BIN / "dvc"), "queue", "status"], ws, env).stdout
    ):
        assert time.monotonic() < deadline, "the queue did not finish"
        time.sleep(2)
    # As wide as the tables are (not cut to a terminal): they must fit 200 columns.
    out = run_block(compare.text, ws, {**env, "COLUMNS": "1000"})
    assert "lr-grid-1" in out and "lr-grid-2" in out and "mlp.lr" in out, out
    assert "test_accuracy" in out and "…" not in out, out
    widest = max(out.splitlines(), key=len)
    assert len(widest) <= 200, f"{len(widest)} columns:\n{out}"
    page = (ws / "dvc_plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and 'id = "MLP_loss"' in page
