"""The Vega confusion matrices of `dvc plots show` read like the PNGs (classify/figures.py):
predicted across, actual down, the classes in the dataset's order on both axes.

The spec is DVC's own (`dvc plots show --json` in a workspace with the project's dvc.yaml and
.dvc/plots/), drawn by the project's Vega (`npm ci --prefix plots`) to an SVG whose axis labels
are read back in the order they are drawn.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from appliedtorch.data.datasets import DATASETS_BY_NAME
from helpers import BIN, REPO
from helpers.repo import run

VEGA = REPO / "plots" / "node_modules"
# Draw the spec on stdin with Vega (no browser): print the SVG's text labels in drawing order.
DRAW = """
const vega = require(process.argv[1] + '/vega'), vl = require(process.argv[1] + '/vega-lite');
let text = ''; process.stdin.on('data', d => text += d).on('end', async () => {
  const view = new vega.View(vega.parse(vl.compile(JSON.parse(text)).spec), {renderer: 'none'});
  const svg = await view.runAsync().then(v => v.toSVG());
  console.log(JSON.stringify([...svg.matchAll(/>([^<>]+)<\\/text>/g)].map(m => m[1])));
});
"""


def test_vega_confusion_matrix_reads_like_the_png(tmp_path):
    if shutil.which("node") is None or not (VEGA / "vega-lite").is_dir():
        pytest.skip("needs node and `npm ci --prefix plots`")
    from appliedtorch.classify.artifacts.outputs import (
        confusion_records,  # the writer of confusion.json
    )

    classes = list(DATASETS_BY_NAME["fashion-mnist"].classes)  # not in alphabetical order
    labels = [k for k in range(10) for _ in range(2)]
    predictions = [(k * 3) % 10 for k in labels]
    ws = tmp_path / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, ws / name)
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)}
    run(["git", "init", "-q"], ws, env)
    run([str(BIN / "dvc"), "init", "-q"], ws, env)
    if (REPO / ".dvc" / "plots").is_dir():
        shutil.copytree(REPO / ".dvc" / "plots", ws / ".dvc" / "plots")
    (ws / "reports" / "mlp").mkdir(parents=True)
    records = confusion_records(labels, predictions, classes)
    (ws / "reports" / "mlp" / "confusion.json").write_text(json.dumps(records))
    shown = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], ws, env).stdout)
    (plot,) = shown["data"]["MLP confusion matrix"]
    drawn = subprocess.run(
        ["node", "-e", DRAW, str(VEGA)],
        input=json.dumps(plot["content"]),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    texts = json.loads(drawn.stdout)
    # Each axis: its ten labels, then its title. The PNG: rows actual, columns predicted.
    for title in ("actual", "predicted"):
        at = texts.index(title)
        assert texts[at - 10 : at] == classes, (title, texts)
    assert plot["content"]["spec"]["encoding"]["x"]["field"] == "predicted"
