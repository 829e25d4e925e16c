"""The training recipe (recipes/cnn-fast.yaml) and the sweep that compares it with the baseline.

A new user's path, offline on synthetic data: the README's one-liner applies the recipe with
`dvc exp run`, and `python -m appliedtorch.recipes compare` queues the baseline, the recipe and
single changes, each one MLflow run tagged with its sweep and variant.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml

from appliedtorch.core.errors import ParamsError
from appliedtorch.recipes import read_recipe, variants
from helpers import BIN, REPO
from helpers.repo import SHRUNK, make_workspace, run, run_queue

RECIPE = REPO / "recipes" / "cnn-fast.yaml"
TINY = ["-S", "cnn.epochs=2", "-S", "cnn.train_limit=256", "-S", "cnn.warmup_epochs=1"]


def readme_one_liner() -> str:
    """The README's command that applies the recipe."""
    text = (REPO / "docs" / "classifiers.md").read_text()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("dvc exp run") and "cnn-fast" in ln
               and "sed" in ln]  # fmt: skip
    return line.split("  #")[0].strip()


def test_a_recipe_may_set_top_level_keys_and_quoted_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("# comment\n\nseed: 7\ncnn.arch: 'resnet'\ncnn.lr: 1e-2\n")
    assert read_recipe(path, REPO / "params.yaml") == {
        "seed": 7,
        "cnn.arch": "resnet",
        "cnn.lr": 0.01,
    }


def test_recipe_is_valid_and_changes_what_it_says():
    recipe = read_recipe(RECIPE, REPO / "params.yaml")
    assert recipe["cnn.arch"] == "resnet" and recipe["cnn.flip_tta"] is True
    table = variants(recipe, yaml.safe_load((REPO / "params.yaml").read_text()))
    assert list(table)[:2] == ["baseline", "recipe"] and table["baseline"] == {}
    assert table["recipe"] == recipe
    # Coupled keys change together; a key params.yaml already has is no change.
    assert set(table["optimizer"]) >= {"cnn.optimizer", "cnn.lr", "cnn.scheduler"}
    assert table["batch_norm"] == {"cnn.batch_norm": True}
    assert "augment" not in table and "momentum" not in table
    # The sed one-liner yields exactly one `-S key=value` per recipe key.
    sed = readme_one_liner().split("$(", 1)[1].rsplit(")", 1)[0]
    out = subprocess.run(sed, shell=True, cwd=REPO, capture_output=True, text=True, check=True)
    pairs = dict(a.removeprefix("-S ").split("=", 1) for a in out.stdout.splitlines())
    assert pairs == {
        k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in recipe.items()
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cnn.arch: vgg\n", r"cnn\.arch must be 'tutorial' or 'resnet' \(got 'vgg'\)"),
        ("cnn.depth: 50\n", r"unknown key 'cnn\.depth'"),
        ("cnn.lr: 0.1  # fast\n", r"line 1 is not `section\.key: value`"),
        ("cnn:\n  lr: 0.1\n", r"line 1 is not `section\.key: value`"),
        ("cnn.nesterov: true\n", r"cnn\.nesterov needs cnn\.optimizer: sgd"),
        ("- cnn.lr\n", r"a recipe is a mapping"),
        ("cnn.lr: &a 0.1\ncnn.gamma: *a\n", r"anchors and aliases are not allowed"),
    ],
)
def test_bad_recipe_is_one_line_naming_the_problem(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ParamsError, match=message) as info:
        read_recipe(bad, REPO / "params.yaml")
    assert "\n" not in str(info.value)
    proc = subprocess.run([sys.executable, "-m", "appliedtorch.recipes", "check", str(bad)],
                          cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert re.search(message, proc.stderr)


def test_compare_checks_every_variant_with_the_extra_overrides():
    # The recipe's Nesterov SGD needs momentum: with momentum 0, every variant with the recipe's
    # optimizer is invalid, named before anything is queued.
    cmd = [sys.executable, "-m", "appliedtorch.recipes", "compare", str(RECIPE), "--dry-run",
           "-S", "cnn.momentum=0"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == (
        "error: params.yaml with variant recipe: cnn.nesterov needs cnn.optimizer: sgd with "
        "cnn.momentum > 0 (got optimizer sgd, momentum 0)"
    )


def test_compare_refuses_to_queue_without_committed_data_and_unknown_variants(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    cmd = [sys.executable, "-m", "appliedtorch.recipes", "compare", str(RECIPE)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "dvc exp run" not in proc.stdout
    assert proc.stderr.strip() == (
        "error: the last commit's dvc.lock has no download@cifar10: queued experiments start "
        "from it; run `dvc repro download@cifar10`, commit dvc.lock, then compare"
    )
    proc = subprocess.run([*cmd, "--dry-run", "--only", "batch_norm,dropuot"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert (
        proc.returncode == 2
        and "--only: no variant dropuot (known: baseline, recipe, " in proc.stderr
    )
    dry = subprocess.run([*cmd, "--dry-run", "--only", "batch_norm"], cwd=tmp_path,
                         capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert [line.split(" -n ")[1].split()[0] for line in dry] == [
        "cnn-fast-cmp.baseline",
        "cnn-fast-cmp.recipe",
        "cnn-fast-cmp.batch_norm",
    ]


def compare_here(
    argv: list[str], monkeypatch, capsys, existing: str = ""
) -> tuple[int, str, list[list[str]]]:
    """`python -m appliedtorch.recipes compare ...` in this process with every command it would
    run recorded, not run (`dvc exp list` answers `existing`): exit code, stderr, the queue
    commands."""
    from appliedtorch import plan, recipes

    ran: list[list[str]] = []

    def fake_run(cmd, *args, **kwargs):
        ran.append(list(cmd))
        if cmd[:2] == ["git", "show"]:  # the last commit's dvc.lock has the data
            locked = {"stages": {"download@cifar10": {}, "download@mnist": {}}}
            return subprocess.CompletedProcess(cmd, 0, yaml.safe_dump(locked), "")
        if cmd[:3] == ["dvc", "exp", "list"]:
            return subprocess.CompletedProcess(cmd, 0, existing, "")
        refused = "bad.recipe" in cmd
        err = (
            "ERROR: Experiment conflicts with existing experiment 'bad.recipe'\n" if refused else ""
        )
        return subprocess.CompletedProcess(cmd, 1 if refused else 0, "", err)

    monkeypatch.setattr(recipes.subprocess, "run", fake_run)
    monkeypatch.setattr(plan.subprocess, "run", fake_run)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        recipes.main(["compare", str(RECIPE), "--params", str(REPO / "params.yaml"), *argv])
        raise SystemExit(0)
    queued = [c for c in ran if c[:3] == ["dvc", "exp", "run"]]
    return info.value.code, capsys.readouterr().err, queued


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-S", "cnn.lr=&a [1, *a]"], r"-S cnn\.lr: YAML anchor &a at line 1: anchors and aliases "),
        (["-S", "cnn.lr.x=1"], r"cnn\.lr\.x: cnn\.lr is a value, not a section; set cnn\.lr itself$"),
        (["-S", "seed.x.y=1"], r"seed\.x\.y: seed is a value, not a section"),
        (["-S", "cnn.lr"], r"-S 'cnn\.lr': not key=value with a dotted params key$"),
        (["-S", "cnn.lr=[1, 2"], r"-S cnn\.lr: not valid YAML at line 1, column \d+: expected ','"),
        (["-S", "cnn.lr=" + "1" * 1001], r"-S cnn\.lr: value longer than 1000 characters$"),
        (["--name", "my sweep"], r"experiment name 'my sweep' is not one DVC takes: .*pass another --name$"),
        (["--name", "a..b"], r"experiment name 'a\.\.b' is not one DVC takes"),
        (["--name", "team/x"], r"experiment name 'team/x' is not one DVC takes"),
        (["--name=-x"], r"experiment name '-x' is not one DVC takes"),
        (["--name", "x.lock"], r"experiment name 'x\.lock' is not one DVC takes"),
        (["--name", "cmp\u202e"], r"experiment name 'cmp\\u202e' is not one DVC takes: .*printable"),
        (["--seeds", "9" * 500], r"--seeds must be 1\.\.64 \(got 9{37}\.\.\.\)$"),
    ],
)  # fmt: skip
def test_compare_refusals_are_one_line_and_queue_nothing(argv, message, monkeypatch, capsys):
    code, err, queued = compare_here(argv, monkeypatch, capsys)
    assert code == 2 and queued == [] and "Traceback" not in err
    assert err.splitlines() == [err.strip()] and re.match(f"error: {message}", err), err


def test_a_variant_dvc_refuses_stops_the_rest_in_one_line(monkeypatch, capsys):
    code, err, queued = compare_here(["--name", "bad", "--only", "batch_norm"], monkeypatch, capsys)
    assert code == 1 and [c[c.index("-n") + 1] for c in queued] == ["bad.baseline", "bad.recipe"]
    assert err == (
        "error: dvc did not queue bad.recipe: ERROR: Experiment conflicts with existing experiment "
        "'bad.recipe'; already queued: bad.baseline (`dvc queue remove <name>`)\n"
    )


def test_good_sets_and_names_queue_every_variant(monkeypatch, capsys):
    code, err, queued = compare_here(["--name", "sweep-1.a", "-S", "cnn.epochs=3", "--only",
                                      "batch_norm"], monkeypatch, capsys)  # fmt: skip
    assert code == 0 and len(queued) == 3 and all("cnn.epochs=3" in c for c in queued), err


@pytest.mark.slow
def test_recipe_one_liner_and_comparison_sweep_offline(tmp_path, mlflow_template_db):
    ws, env = make_workspace(tmp_path, SHRUNK, tracking_uri="unused")
    del env["MLFLOW_TRACKING_URI"]  # the workspace's own mlflow.db, as for a user
    shutil.copy(mlflow_template_db, ws / "mlflow.db")  # git-ignored; skips the schema migration
    run([str(BIN / "dvc"), "repro", "download@cifar10"], ws, env)  # the data, once, in the cache
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "data"], ws, env)
    check_the_readme_one_liner(ws, env)
    run(["git", "checkout", "--", "params.yaml"], ws, env)
    accuracy = queue_the_comparison(ws, env)
    check_one_mlflow_run_per_variant(ws, accuracy)


def check_the_readme_one_liner(ws: Path, env: dict) -> None:
    """The README's one-liner, as typed (plus the tiny sizes), trains the recipe's ResNet."""
    cmd = f"{readme_one_liner()} {' '.join(TINY)} train_cnn"
    proc = subprocess.run(cmd, shell=True, cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = yaml.safe_load((ws / "params.yaml").read_text())["cnn"]
    assert (params["arch"], params["optimizer"], params["flip_tta"]) == ("resnet", "sgd", True)
    metrics = json.loads((ws / "reports/cnn/details.json").read_text())
    described = json.loads((ws / "reports/cnn/run.json").read_text())
    assert metrics["epochs"] == 2 and described["data_source"] == "synthetic"
    import torch

    saved = torch.load(ws / "models/cnn.pt", weights_only=True)
    assert saved["net"] == "resnet" and saved["model_args"]["flip_tta"] is True


def queue_the_comparison(ws: Path, env: dict) -> dict[str, float]:
    """The comparison sweep, three variants queued with one command and run; each experiment's
    test accuracy as `dvc exp show` gives it."""
    compare = [sys.executable, "-m", "appliedtorch.recipes", "compare", "recipes/cnn-fast.yaml",
               "--name", "cmp", "--only", "batch_norm", *TINY]  # fmt: skip
    out = run(compare, ws, env).stdout
    assert out.count("dvc exp run --queue -f -s") == 3, out
    status = run_queue(ws, env, jobs=2, timeout=900)
    names = ("cmp.baseline", "cmp.recipe", "cmp.batch_norm")
    for name in names:
        assert re.search(rf"{re.escape(name)}\s.*Success", status), status
    shown = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], ws, env).stdout)
    exps = {e["name"]: e for rev in shown for e in rev.get("experiments") or []}
    accuracy = {}
    for name in names:
        data = exps[name]["revs"][0]["data"]
        accuracy[name] = data["metrics"]["reports/cnn/metrics.json"]["data"]["test_accuracy"]
        cnn = data["params"]["params.yaml"]["data"]["cnn"]
        assert cnn["batch_norm"] is (name != "cmp.baseline")
        assert cnn["arch"] == ("resnet" if name == "cmp.recipe" else "tutorial")
    return accuracy


def check_one_mlflow_run_per_variant(ws: Path, accuracy: dict[str, float]) -> None:
    """One MLflow run each, tagged with the sweep and the variant, with the numbers DVC shows;
    the recipe's logged model (a ResNet with flip TTA) still takes uint8 pixels."""
    client = mlflow.MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cifar10-cnn")
    runs = client.search_runs([exp.experiment_id], "tags.sweep = 'cmp'")
    by_variant = {r.data.tags["variant"]: r for r in runs}
    assert sorted(by_variant) == ["baseline", "batch_norm", "recipe"]
    for variant, r in by_variant.items():
        assert r.info.status == "FINISHED"
        assert r.data.metrics["test_accuracy"] == accuracy[f"cmp.{variant}"]
    assert by_variant["recipe"].data.params["cnn.scheduler"] == "onecycle"
    assert by_variant["baseline"].data.params["cnn.optimizer"] == "adam"
    recipe_run = by_variant["recipe"].info.run_id
    mlflow.set_tracking_uri(f"sqlite:///{ws / 'mlflow.db'}")
    try:
        models = mlflow.search_logged_models(
            experiment_ids=[exp.experiment_id], output_format="list"
        )
        (logged,) = [m for m in models if m.source_run_id == recipe_run]
        pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
        probs = mlflow.pyfunc.load_model(f"models:/{logged.model_id}").predict(pixels)
    finally:
        mlflow.set_tracking_uri(None)
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
def test_recipe_benchmark_runs_as_the_readme_says(tmp_path):
    """`python benchmarks/recipe.py` from any directory (no repo root on sys.path): both runs
    train the epochs their params say, and the recipe's net costs fewer FLOPs per image."""
    out = tmp_path / "recipe.json"
    script = REPO / "benchmarks" / "recipe.py"
    cmd = [sys.executable, str(script), "--train", "64", "--test", "32", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    tutorial, recipe = result["variants"]["baseline"], result["variants"]["recipe"]
    assert (tutorial["net"], len(tutorial["runs"][0]["epoch_seconds"])) == ("cnn", 10)
    assert (recipe["net"], len(recipe["runs"][0]["epoch_seconds"])) == ("resnet", 7)
    assert recipe["train_mflop_per_image"] < tutorial["train_mflop_per_image"]
    assert all(0 <= r["test_accuracy"] <= 1 for r in (tutorial, recipe))
    assert result["machine"]["cpu"]["model"] in proc.stdout


# ---- what a comparison will run, said before it is queued (issue 37) ----------------------------


def compare_process(tmp_path, *argv: str, recipe_lines: str = "") -> subprocess.CompletedProcess:
    """`recipes compare <cnn-fast + recipe_lines> --dry-run --only batch_norm ...` as a real
    process in `tmp_path` (no DVC repository)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text() + recipe_lines)
    cmd = [sys.executable, "-m", "appliedtorch.recipes", "compare", str(recipe), "--params",
           str(REPO / "params.yaml"), "--dry-run", "--only", "batch_norm", *argv]  # fmt: skip
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_a_recipes_seeds_apply_to_every_variant(tmp_path):
    proc = compare_process(tmp_path, recipe_lines="cnn.seeds: 3\n")
    assert proc.returncode == 0, proc.stderr
    commands = proc.stdout.splitlines()
    assert len(commands) == 3 and all(c.count("cnn.seeds=3") == 1 for c in commands), commands
    assert "cnn.seeds: 3 member(s) per variant, from cnn.seeds: 3 in r.yaml" in proc.stderr


def test_seeds_from_the_command_line_win_with_a_warning(tmp_path):
    proc = compare_process(tmp_path, "-S", "cnn.seeds=4", "--seeds", "5",
                           recipe_lines="cnn.seeds: 3\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert all(c.count("cnn.seeds") == 1 and "cnn.seeds=5" in c for c in proc.stdout.splitlines())
    assert re.search(
        r"--seeds 5 wins over cnn\.seeds: 3 in r\.yaml and -S cnn\.seeds=4: each variant trains "
        r"5 member\(s\)",
        proc.stderr,
    ), proc.stderr


def test_the_cost_is_said_before_queueing(tmp_path):
    proc = compare_process(tmp_path, "--seeds", "2")
    assert re.search(r"cost of cnn: 3 variants, 6 training runs, 54 epochs in all \(no "
                     r"reports/cnn/metrics\.json here", proc.stderr), proc.stderr  # fmt: skip
    (tmp_path / "reports" / "cnn").mkdir(parents=True)
    (tmp_path / "reports" / "cnn" / "details.json").write_text('{"mean_epoch_seconds": 100}')
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # the workspace whose run it was
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.read_text())
    cmd = [sys.executable, "-m", "appliedtorch.recipes", "compare", str(recipe), "--dry-run",
           "--only", "batch_norm", "--seeds", "64", "-S", "cnn.epochs=100000"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert re.search(r"cost of cnn: 3 variants, 192 training runs, 19,200,000 epochs in all: "
                     r"~533,333\.3 h at 100 s per epoch", proc.stderr), proc.stderr  # fmt: skip


def test_dry_run_refuses_names_the_commit_has_already(monkeypatch, capsys):
    code, err, queued = compare_here(["--name", "cmp", "--only", "batch_norm", "--dry-run"],
                                     monkeypatch, capsys, existing="other\ncmp.recipe\n")  # fmt: skip
    assert code == 2 and queued == []
    assert re.match(r"error: experiment cmp\.recipe exists already on this commit \(1 of the 3 "
                    r"names do\): queued, it would replace it; pass another --name", err), err  # fmt: skip


def test_a_name_too_long_for_a_ref_file_is_refused(monkeypatch, capsys):
    code, err, queued = compare_here(["--name", "x" * 201, "--dry-run"], monkeypatch, capsys)
    assert code == 2 and "at most 200 bytes; pass another --name" in err


@pytest.mark.parametrize("key", ["tracking.uri: http://evil.example:80", "data.source: /etc",
                                 "device: cuda"])  # fmt: skip
def test_a_recipe_changes_training_settings_only(key, tmp_path):
    """A recipe comes from someone else: it must not send the runs to another server or read
    data from elsewhere."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"cnn.lr: 0.01\n{key}\n")
    with pytest.raises(ParamsError, match=rf"{key.split(':')[0]} is not a training setting: a "
                       r"recipe changes seed, mlp\.\*, cnn\.\* only"):  # fmt: skip
        read_recipe(recipe, REPO / "params.yaml")
