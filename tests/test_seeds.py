"""`mlp.seeds` / `cnn.seeds`: members with their own seeds in one run, their statistics, the
ensemble as the model, resume, the torchrun refusal, and `recipes compare` with error bars."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from appliedtorch.classify.artifacts.outputs import (
    pixel_classifier,
    save_verified_model,
    summary_metrics,
)
from appliedtorch.classify.nets.models import Ensemble, PixelClassifier, load_model
from appliedtorch.classify.params import MLPParams
from appliedtorch.classify.runs.distributed import SINGLE
from appliedtorch.classify.runs.ensemble import (
    MemberStates,
    member_resume_path,
    seed_summary,
    statistics,
    train_seeds,
)
from appliedtorch.classify.training.loop import train_classifier
from appliedtorch.core.errors import ParamsError
from appliedtorch.data.download.fetch import download
from appliedtorch.data.loading import load_dataset
from appliedtorch.params import load_params
from helpers import REPO, run_script
from helpers.data import make_data

TRIO = MLPParams(seeds=3, epochs=2, batch_size=64, threads=1)
SEED = 5
TIMING = {"epoch_seconds", "eval_seconds"}


@pytest.fixture(scope="module")
def mnist():
    return make_data("mnist", 640, 200)


@pytest.fixture(scope="module")
def trio(mnist):
    return train_seeds(mnist, TRIO, seed=SEED)


def numbers(result):
    return [{k: v for k, v in vars(h).items() if k not in TIMING} for h in result.history]


# ---- members -----------------------------------------------------------------------------------


def test_member_k_is_the_single_run_with_seed_plus_k(trio, mnist):
    assert len(trio.members) == 3 and isinstance(trio.model, Ensemble)
    weights = [m.model.fc1.weight for m in trio.members]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    alone = train_classifier(mnist, TRIO.model_copy(update={"seeds": 1}), seed=SEED + 1)
    assert numbers(alone) == numbers(trio.members[1])
    assert torch.equal(alone.model.fc1.weight, trio.members[1].model.fc1.weight)


def test_seeds_1_is_the_single_net_with_no_new_metrics(mnist):
    one = TRIO.model_copy(update={"seeds": 1, "epochs": 1})
    a, b = train_seeds(mnist, one, seed=SEED), train_classifier(mnist, one, seed=SEED)
    assert a.members == [] and numbers(a) == numbers(b)
    assert torch.equal(a.evaluation.predictions, b.evaluation.predictions)
    assert seed_summary(a) == {}
    assert list(summary_metrics(a)) == list(summary_metrics(b))


def test_ensemble_probabilities_are_the_members_mean(trio, mnist):
    images = mnist.test_images[:50]
    with torch.inference_mode():
        ensemble = pixel_classifier(trio)(images)
        each = [PixelClassifier(m.model, trio.mean, trio.std)(images) for m in trio.members]
    torch.testing.assert_close(ensemble, torch.stack(each).mean(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(trio.evaluation.predictions[:50], ensemble.argmax(1))


def test_statistics_are_numpys_and_scipys():
    values = [0.91, 0.935, 0.92, 0.94]
    got = statistics(values)
    mean, sd = np.mean(values), np.std(values, ddof=1)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sd / np.sqrt(len(values)))
    assert got == pytest.approx({"mean": mean, "sd": sd, "ci95_low": low, "ci95_high": high})
    with pytest.raises(ValueError, match="at least 2"):
        statistics([0.9])


def test_model_file_holds_the_ensemble_and_reloads_with_weights_only(trio, mnist, tmp_path):
    path = tmp_path / "mlp.pt"
    again = save_verified_model(trio, mnist, path)
    assert torch.equal(again.predictions, trio.evaluation.predictions)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["members"] == 3 and saved["net"] == "mlp"
    model, _ = load_model(path)
    assert isinstance(model.net, Ensemble) and len(model.net.members) == 3
    with torch.inference_mode():
        torch.testing.assert_close(
            model(mnist.test_images[:20]), pixel_classifier(trio)(mnist.test_images[:20])
        )


@pytest.mark.parametrize("seeds", [0, 65, "three"])
def test_bad_seeds_are_one_line(params_file, seeds):
    with pytest.raises(ParamsError, match=r"^params\.yaml: mlp\.seeds must be") as info:
        load_params(params_file({"mlp": {"seeds": seeds}}))
    assert "\n" not in str(info.value)


# ---- resume ------------------------------------------------------------------------------------


class Killed(Exception):
    pass


def test_a_run_killed_after_member_1_resumes_to_the_same_ensemble(trio, mnist, tmp_path):
    model_path = tmp_path / "mlp.pt"

    def states():
        return MemberStates.open(model_path, "fingerprint", SINGLE, TRIO.epochs, TRIO.seeds)

    def kill_in_member_2(stats):
        if (stats.member, stats.epoch) == (2, 2):
            raise Killed  # member 2's first epoch is saved, its second is not

    with pytest.raises(Killed):
        train_seeds(mnist, TRIO, seed=SEED, callback=kill_in_member_2, resume=states())
    assert [member_resume_path(model_path, k).exists() for k in range(3)] == [True] * 3
    trained = []
    resume = states()
    again = train_seeds(
        mnist,
        TRIO,
        seed=SEED,
        callback=lambda e: trained.append((e.member, e.epoch)),
        resume=resume,
    )
    resume.remove()
    assert not any(member_resume_path(model_path, k).exists() for k in range(3))
    assert trained == [(2, 2)]  # members 0 and 1 were not trained again, member 2 resumed
    for a, b in zip(again.members, trio.members, strict=True):
        assert numbers(a) == numbers(b)
        for (name, x), (_, y) in zip(
            a.model.state_dict().items(), b.model.state_dict().items(), strict=True
        ):
            assert torch.equal(x, y), name
    assert numbers(again) == numbers(trio)
    assert torch.equal(again.evaluation.predictions, trio.evaluation.predictions)
    assert again.evaluation.loss == trio.evaluation.loss


# ---- the stage ---------------------------------------------------------------------------------


def test_seeds_under_torchrun_are_refused_in_one_line_before_any_work(tmp_path, params_file):
    params = params_file({"device": "cpu", "mlp": {"seeds": 3}})
    model = tmp_path / "models" / "mlp.pt"
    proc = run_script(
        "stages/train.py", "--section", "mlp", "--params", params, "--data", tmp_path / "none",
        "--model", model, "--reports", tmp_path / "reports", cwd=tmp_path,
        env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "error: mlp.seeds: 3 members under torchrun (2 processes) is not supported; run the "
        "stage without torchrun, or set mlp.seeds: 1"
    ]
    assert not model.parent.exists() and not (tmp_path / "reports").exists()


@pytest.mark.slow
@pytest.mark.parametrize("together", ["auto", True])  # auto: one after another on the CPU
def test_stage_with_three_seeds_end_to_end(tmp_path, tracking_uri, params_file, together):
    data_dir = tmp_path / "data" / "raw" / "mnist"
    download("mnist", data_dir, source="synthetic", synthetic_sizes=(600, 200))
    section = {"seeds": 3, "epochs": 1, "members_together": together}
    params = params_file({"device": "cpu", "mlp": section})
    model, reports = tmp_path / "models" / "mlp.pt", tmp_path / "reports" / "mlp"
    proc = run_script(
        "stages/train.py", "--section", "mlp", "--params", params, "--data", data_dir, "--model", model,
        "--reports", reports, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    headline = json.loads((reports / "metrics.json").read_text())
    metrics = headline | json.loads((reports / "details.json").read_text())
    # the members' test accuracy mean and CI beside the ensemble's in the headline
    assert {"test_accuracy_mean", "test_accuracy_ci95_low"} <= headline.keys()
    members = pd.read_csv(reports / "members.csv")
    assert members["member"].tolist() == [0, 1, 2]
    for name in ("test_accuracy", "test_loss", "macro_f1"):
        values = members[name].to_numpy()
        mean, sd = values.mean(), values.std(ddof=1)
        low, high = stats.t.interval(0.95, 2, loc=mean, scale=sd / np.sqrt(3))
        assert metrics[f"{name}_mean"] == pytest.approx(mean, rel=1e-12)
        assert metrics[f"{name}_sd"] == pytest.approx(sd, rel=1e-9)
        assert (metrics[f"{name}_ci95_low"], metrics[f"{name}_ci95_high"]) == pytest.approx(
            (low, high), rel=1e-9
        )
    assert len(metrics) <= 30 and not any(isinstance(v, dict) for v in metrics.values())
    _, saved = load_model(model)
    assert saved["members"] == 3 and saved["test_accuracy"] == metrics["test_accuracy"]

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name("mnist-mlp")
    (run,) = client.search_runs([exp.experiment_id])
    history = client.get_metric_history(run.info.run_id, "member_test_accuracy")
    assert [(m.step, m.value) for m in history] == list(enumerate(members["test_accuracy"]))
    assert run.data.metrics["test_accuracy"] == metrics["test_accuracy"]
    assert run.data.metrics["test_accuracy_ci95_high"] == metrics["test_accuracy_ci95_high"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "member_2/test_loss")] == [1]
    # The logged model is the ensemble: its pyfunc gives the model file's probabilities.
    mlflow.set_tracking_uri(tracking_uri)
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], output_format="list"
    )
    images = load_dataset("mnist", data_dir).test_images[:4]
    served = mlflow.pyfunc.load_model(f"models:/{logged.model_id}").predict(images.numpy())
    with torch.inference_mode():
        expected = load_model(model)[0](images).numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)

    check_predict_on_the_ensemble_file(model, data_dir, tmp_path, saved)


def check_predict_on_the_ensemble_file(model: Path, data_dir: Path, tmp_path: Path, saved: dict):
    """appliedtorch-predict on an ensemble's model file answers as the model file does."""
    png = tmp_path / "digit.png"
    predict = str(REPO / ".venv" / "bin" / "appliedtorch-predict")
    subprocess.run([predict, "--export-test-image", data_dir, png], check=True, capture_output=True)
    out = subprocess.run([predict, "--model", model, png], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    _, label, probability = out.stdout.strip().split("\t")
    with torch.inference_mode():
        from appliedtorch.classify.inference.predict import read_image

        probs = load_model(model)[0](read_image(png, (1, 28, 28)).unsqueeze(0))[0]
    assert label == saved["classes"][int(probs.argmax())]
    assert float(probability) == pytest.approx(float(probs.max()), abs=1e-4)


# ---- recipes compare ---------------------------------------------------------------------------


def fake_subprocess(monkeypatch, shown: list[dict]) -> list[list[str]]:
    """recipes' subprocess.run recording every command: git shows a dvc.lock with the data,
    `dvc exp show --json` prints `shown`, anything else (queueing) succeeds."""
    from appliedtorch import exp_show, recipes

    ran: list[list[str]] = []

    def run(cmd, *args, **kwargs):
        ran.append(list(cmd))
        if cmd[:2] == ["git", "show"]:
            locked = {"stages": {"download@cifar10": {}, "download@mnist": {}}}
            return subprocess.CompletedProcess(cmd, 0, yaml.safe_dump(locked), "")
        if cmd[:3] == ["dvc", "exp", "show"]:
            return subprocess.CompletedProcess(cmd, 0, json.dumps(shown), "")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def read_bounded(cmd):  # exp_show reads dvc's output bounded, through its own pipe
        proc = run(cmd)
        return proc.returncode, proc.stdout, proc.stderr

    monkeypatch.setattr(recipes.subprocess, "run", run)
    monkeypatch.setattr(exp_show, "read_bounded", read_bounded)
    return ran


def compare(argv, monkeypatch, capsys, shown=()):
    from appliedtorch import recipes

    ran = fake_subprocess(monkeypatch, list(shown))
    capsys.readouterr()
    recipe = str(REPO / "recipes" / "cnn-fast.yaml")
    recipes.main(["compare", recipe, "--params", str(REPO / "params.yaml"), *argv])
    return ran, capsys.readouterr().out


def test_compare_seeds_sets_the_seed_count_on_every_variant(monkeypatch, capsys):
    ran, _ = compare(["--seeds", "3", "--only", "batch_norm"], monkeypatch, capsys)
    queued = [c for c in ran if c[:3] == ["dvc", "exp", "run"]]
    assert len(queued) == 3 and all("cnn.seeds=3" in c for c in queued)


def experiment(name: str, accuracies: list[float]) -> dict:
    """What `dvc exp show --json` gives for one finished experiment with these members."""
    metrics = {"test_accuracy": max(accuracies)}
    if len(accuracies) > 1:
        metrics |= {f"test_accuracy_{k}": v for k, v in statistics(accuracies).items()}
    params = {"cnn": {"seeds": len(accuracies)}}
    data = {
        "metrics": {"reports/cnn/metrics.json": {"data": metrics}},
        "params": {"params.yaml": {"data": params}},
    }
    return {"name": name, "revs": [{"name": name, "data": data}]}


def test_compare_results_give_mean_ci_and_welchs_p(monkeypatch, capsys):
    base, bn = [0.61, 0.63, 0.62, 0.60], [0.66, 0.69, 0.65]
    shown = [{"rev": "workspace", "experiments": [
        experiment("cnn-fast-cmp.baseline", base),
        experiment("cnn-fast-cmp.batch_norm", bn),
        experiment("cnn-fast-cmp.recipe", [0.7]),
    ]}]  # fmt: skip
    ran, out = compare(["--results", "--only", "batch_norm"], monkeypatch, capsys, shown)
    assert not [c for c in ran if c[:3] == ["dvc", "exp", "run"]]
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    s = statistics(base)
    half = 100 * (s["ci95_high"] - s["ci95_low"]) / 2
    assert f"n=4  {100 * s['mean']:.2f} % ± {half:.2f}" in lines["baseline"]
    p = stats.ttest_ind(bn, base, equal_var=False).pvalue  # on the members' values
    got = float(lines["batch_norm"].rsplit("p=", 1)[1])
    assert got == pytest.approx(p, rel=1e-3) and 0 < got < 0.05
    assert "n=1  70.00 %" in lines["recipe"] and "no CI" in lines["recipe"]


def test_members_share_one_dataclass_shape():
    from appliedtorch.classify.runs.ensemble import MemberEpoch
    from appliedtorch.classify.training.results import EpochStats

    e = MemberEpoch(**dataclasses.asdict(EpochStats(1, 0.5, 0.4, 0.9, 1.0, 0.1, 1e-3)), member=2)
    assert e.metrics()["member_2/test_accuracy"] == 0.9 and len(e.metrics()) == 5
