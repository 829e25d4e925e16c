"""Classifier training: models learn, batch augmentation is torchvision's, runs are reproducible,
reports and model files are right, and both stages run end to end with an MLflow run."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from torchvision import transforms

from appliedtorch.classify.artifacts.outputs import (
    classification_metrics,
    evaluate_pixels,
    final_metrics,
    save_verified_model,
    write_reports,
)
from appliedtorch.classify.nets.models import CNN, MLP, PixelClassifier, load_model
from appliedtorch.classify.params import CNNParams, MLPParams
from appliedtorch.classify.training.batches import (
    NORMALIZATION,
    Batches,
    Normalizer,
    random_crop_flip,
)
from appliedtorch.classify.training.loop import evaluate, train_classifier
from appliedtorch.classify.training.results import Evaluation
from appliedtorch.core import openmp
from appliedtorch.core.errors import DivergenceError
from appliedtorch.core.params import run_params
from appliedtorch.core.utils import flatten, thread_count
from appliedtorch.data.download.fetch import download
from appliedtorch.data.loading import ImageData, load_dataset
from appliedtorch.params import load_params
from helpers import run_script
from helpers.data import make_data

# threads=1: two OpenMP threads on a busy 2-core runner spin against each other.
MLP_CONFIG = MLPParams(epochs=2, batch_size=64, lr=1e-3, threads=1)
CNN_CONFIG = CNNParams(
    epochs=3,
    batch_size=32,
    lr=2e-3,
    step_size=5,
    augment=True,
    channels_last=True,
    threads=1,
    bf16=False,
)


@pytest.fixture(scope="module")
def mnist() -> ImageData:
    return make_data("mnist", 1280, 300)


@pytest.fixture(scope="module")
def cifar() -> ImageData:
    return make_data("cifar10", 640, 200)


@pytest.fixture(scope="module")
def mlp_result(mnist):
    return train_classifier(mnist, MLP_CONFIG)


# ---- models ------------------------------------------------------------------------------------


def test_model_shapes_match_the_tutorial():
    mlp, cnn = MLP(), CNN()
    assert mlp(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert cnn(torch.zeros(3, 3, 32, 32)).shape == (3, 10)
    assert [tuple(m.weight.shape) for m in (mlp.fc1, mlp.fc2, mlp.fc3)] == [
        (128, 784),
        (128, 128),
        (10, 128),
    ]
    assert [c.out_channels for c in (cnn.conv1, cnn.conv2, cnn.conv3)] == [32, 64, 128]
    assert tuple(cnn.fc1.weight.shape) == (512, 2048) and cnn.dropout.p == 0.5
    assert MLP(hidden_size=32).fc2.weight.shape == (32, 32)


@pytest.mark.parametrize("channels_last", [False, True])
def test_pixel_classifier_normalises_exactly_as_training_does(channels_last):
    """The saved model's own normalisation gives the very floats the training batches had."""
    mean, std = NORMALIZATION["cifar10"]
    torch.manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    seen = []
    net = CNN().eval()
    classifier = PixelClassifier(net, mean, std, channels_last).eval()
    net.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    with torch.inference_mode():
        probs = classifier(images)
        logits = net(Normalizer(mean, std, channels_last=channels_last)(images))
    assert torch.equal(seen[0], Normalizer(mean, std, channels_last=channels_last)(images))
    assert torch.equal(probs, torch.softmax(logits, dim=1))
    assert probs.dtype == torch.float32 and probs.shape == (5, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))


# ---- batch transforms --------------------------------------------------------------------------


def test_normalizer_matches_torchvision_totensor_normalize():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    mean, std = NORMALIZATION["cifar10"]
    expected = torch.stack(
        [transforms.Normalize(mean, std)(img.float() / 255) for img in images]
    )  # ToTensor on a uint8 CHW tensor is the division by 255
    got = Normalizer(mean, std, channels_last=True)(images)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_normalizer_gives_the_per_channel_multiply_adds_bits_at_any_size(channels_last):
    """Its constants are kept at the batches' full size and layout: the values must be those of
    the plain per-channel broadcast, for every image size in turn."""
    mean, std = NORMALIZATION["cifar10"]
    normalize = Normalizer(mean, std, channels_last=channels_last)
    shift = -torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1)
    scale = 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for size in ((32, 32), (17, 9), (32, 32)):
        images = torch.randint(0, 256, (6, 3, *size), dtype=torch.uint8)
        got = normalize(images)
        assert torch.equal(got, torch.addcmul(shift, images.float(), scale))
        assert got.shape == (6, 3, *size) and got.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize(("shape", "channels_last"), [((1, 28, 28), False), ((3, 32, 32), True)])
def test_batches_normalised_once_are_the_batch_by_batch_bits(monkeypatch, shape, channels_last):
    from appliedtorch.classify.training import batches as batches_module

    images = torch.randint(0, 256, (203, *shape), dtype=torch.uint8)  # a short last batch
    labels = torch.randint(0, 10, (203,))
    mean, std = NORMALIZATION["cifar10" if shape[0] == 3 else "mnist"]
    normalize = Normalizer(mean, std, channels_last=channels_last)

    def epochs(**kwargs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        shuffled = Batches(images, labels, 32, normalize, shuffle=torch.Generator().manual_seed(5))
        in_order = Batches(images, labels, 64, normalize)
        assert (shuffled.normalized is None) == kwargs["per_batch"]
        return [*shuffled, *shuffled, *in_order]  # two shuffled epochs, then one in order

    once = epochs(per_batch=False)
    monkeypatch.setattr(batches_module, "NORMALIZE_ONCE_MAX_BYTES", 4 * images.numel() - 1)
    per_batch = epochs(per_batch=True)
    assert len(once) == len(per_batch) == 2 * 7 + 4
    for (x, y), (x_ref, y_ref) in zip(once, per_batch, strict=True):
        assert x.dtype == torch.float32 and torch.equal(x, x_ref) and torch.equal(y, y_ref)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=fmt)
    # with augmentation every epoch draws new crops: nothing is normalised up front
    augmented = Batches(images, labels, 32, normalize, augment=torch.Generator().manual_seed(1))
    assert augmented.normalized is None


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_a_batchs_rows_are_what_indexing_gives(fmt):
    """Batches gathers shuffled rows with index_select where that gives what `tensor[rows]`
    gives: the same values and the same strides (channels_last kept), a slice still a view."""
    from appliedtorch.classify.training.batches import _take

    x = torch.randn(50, 3, 4, 4).contiguous(memory_format=fmt)
    rows = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:7]
    for tensor in (x, (x * 50).to(torch.uint8), torch.arange(50)):
        got, expected = _take(tensor, rows), tensor[rows]
        assert torch.equal(got, expected) and got.stride() == expected.stride()
    assert _take(x, slice(2, 5)).data_ptr() == x[2:5].data_ptr()


def _identify(original: np.ndarray, augmented: np.ndarray, pad: int = 4) -> list[list[tuple]]:
    """For each image, every (dy, dx, flipped) that maps `original` onto `augmented`.

    A crop of the zero-padded image at offset (top, left) is the image shifted by
    (dy, dx) = (pad - top, pad - left) with zero fill; a flip mirrors the crop.
    """
    n, _, h, w = original.shape
    padded = np.pad(original, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    found: list[list[tuple]] = [[] for _ in range(n)]
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = padded[:, :, top : top + h, left : left + w]
            for flipped, candidate in ((False, crop), (True, crop[..., ::-1])):
                hits = (candidate == augmented).all(axis=(1, 2, 3))
                for i in np.flatnonzero(hits):
                    found[i].append((pad - top, pad - left, flipped))
    return found


def test_crop_flip_is_a_zero_filled_shift_and_maybe_a_flip():
    # Pixel values >= 1, so the zero fill of a shift cannot be mistaken for image content.
    images = torch.randint(1, 256, (400, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    found = _identify(images.numpy(), out.numpy())
    assert all(len(m) == 1 for m in found), "each output is exactly one zero-filled shift (+ flip)"
    assert {m[0][2] for m in found} == {False, True}
    assert len({m[0][:2] for m in found}) > 60  # most of the 81 shifts occur


def test_crop_flip_is_the_per_image_crop_of_its_draws():
    # the same draws, made here as random_crop_flip makes them, cropped image by image
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    out = random_crop_flip(images, torch.Generator().manual_seed(4), padding=4)
    g = torch.Generator().manual_seed(4)
    top = torch.randint(0, 9, (64, 1), generator=g)
    left = torch.randint(0, 9, (64, 1), generator=g)
    flip = torch.rand((64, 1), generator=g) < 0.5
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(64):
        t, lft = int(top[i]), int(left[i])
        crop = padded[i, :, t : t + 32, lft : lft + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop), i


def _shift_flip_sample(images: torch.Tensor, augmented: torch.Tensor) -> list[tuple]:
    found = _identify(images.numpy(), augmented.numpy())
    assert all(len(m) == 1 for m in found)
    return [m[0] for m in found]


def test_crop_flip_has_torchvisions_distribution():
    images = torch.randint(1, 256, (2000, 1, 32, 32), dtype=torch.uint8)
    ours = _shift_flip_sample(images, random_crop_flip(images, torch.Generator().manual_seed(1)))
    torch.manual_seed(2)
    per_sample = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    )
    some = images[:600]
    theirs = _shift_flip_sample(some, torch.stack([per_sample(img) for img in some]))

    for sample in (ours, theirs):
        flips = sum(f for _, _, f in sample) / len(sample)
        # Binomial(n, 1/2): within 5 standard deviations of one half.
        assert abs(flips - 0.5) < 5 * 0.5 / np.sqrt(len(sample))
        for axis in (0, 1):
            counts = Counter(s[axis] for s in sample)
            assert sorted(counts) == list(range(-4, 5))  # every shift -4..4 occurs
            assert chisquare([counts[k] for k in range(-4, 5)]).pvalue > 1e-3  # uniform
    # The same law: shift frequencies of ours and torchvision's agree within sampling error.
    for axis in (0, 1):
        ours_freq = np.array([Counter(s[axis] for s in ours)[k] for k in range(-4, 5)]) / len(ours)
        theirs_freq = np.array([Counter(s[axis] for s in theirs)[k] for k in range(-4, 5)]) / 600
        assert np.abs(ours_freq - theirs_freq).max() < 0.07


def test_crop_flip_without_padding_and_flip_is_identity():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(images, padding=0, flip_p=0.0), images)
    assert torch.equal(random_crop_flip(images, padding=0, flip_p=1.0), images.flip(-1))


# ---- training ----------------------------------------------------------------------------------


def test_mlp_beats_chance_by_far(mlp_result):
    history = mlp_result.history
    assert len(history) == 2
    assert mlp_result.evaluation.accuracy > 0.6  # chance is 0.1
    assert history[-1].train_loss < history[0].train_loss
    assert mlp_result.train_samples == 1280 and mlp_result.train_seconds > 0


def test_cnn_beats_chance_by_far(cifar):
    result = train_classifier(cifar, CNN_CONFIG)
    assert result.evaluation.accuracy > 0.3  # chance is 0.1
    assert result.history[-1].test_loss < result.history[0].test_loss


def test_two_seeded_runs_give_identical_numbers(mnist, cifar):
    timing = {"epoch_seconds", "eval_seconds"}

    def numbers(result):
        return [{k: v for k, v in vars(h).items() if k not in timing} for h in result.history]

    a, b = (train_classifier(mnist, MLP_CONFIG.model_copy(update=dict(epochs=1))) for _ in range(2))
    assert numbers(a) == numbers(b)
    assert torch.equal(a.evaluation.predictions, b.evaluation.predictions)
    # The CNN draws augmentation and dropout randomness too.
    cnn = CNN_CONFIG.model_copy(update=dict(epochs=1, train_limit=192))
    c, d = (train_classifier(cifar, cnn) for _ in range(2))
    assert numbers(c) == numbers(d)
    other = train_classifier(cifar, cnn, seed=1)
    assert numbers(other) != numbers(c)


def test_callback_gets_every_epoch(mnist):
    seen = []
    train_classifier(
        mnist, MLP_CONFIG.model_copy(update=dict(train_limit=256)), callback=seen.append
    )
    assert [s.epoch for s in seen] == [1, 2]
    assert set(seen[0].metrics()) >= {"train_loss", "test_loss", "test_accuracy", "epoch_seconds"}


def test_divergence_raises_with_epoch_step_and_lr(mnist):
    with pytest.raises(DivergenceError, match=r"epoch 1, step \d+ \(lr inf\).*mlp\.lr"):
        train_classifier(
            mnist, MLP_CONFIG.model_copy(update=dict(lr=float("inf"), train_limit=256))
        )


def test_evaluation_confusion_matches_a_direct_count_and_sums_to_test_size():
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    preds = torch.tensor([0, 2, 2, 1, 1, 0, 2])
    ev = Evaluation(loss=0.0, accuracy=4 / 7, predictions=preds, labels=labels)
    cm = ev.confusion(4)
    expected = np.zeros((4, 4), dtype=int)
    for a, p in zip(labels.tolist(), preds.tolist(), strict=True):
        expected[a, p] += 1
    np.testing.assert_array_equal(cm, expected)
    assert cm.sum() == 7
    assert ev.per_class_accuracy(4) == [1.0, 0.5, 2 / 3, None]  # class 3 absent


def test_precision_recall_f1_match_a_hand_computed_confusion_matrix():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    preds = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 0, 2, 3])
    ev = Evaluation(loss=0.0, accuracy=6 / 11, predictions=preds, labels=labels)
    # Counted by hand: rows actual, columns predicted. Class d never occurs but is predicted once.
    cm = np.array(
        [
            [3, 1, 0, 0],
            [0, 1, 1, 0],
            [1, 0, 3, 1],
            [0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(ev.confusion(4), cm)
    # precision = diagonal / column sum, recall = diagonal / row sum; 0 where a sum is 0.
    precision = [3 / 4, 1 / 2, 3 / 4, 0.0]  # column sums 4, 2, 4, 1
    recall = [3 / 4, 1 / 2, 3 / 5, 0.0]  # row sums 4, 2, 5, 0
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall, strict=True)]
    assert f1[2] == pytest.approx(2 / 3)  # 2 * 0.75 * 0.6 / 1.35

    got = classification_metrics(ev, ["a", "b", "c", "d"])
    for name, want in (("precision", precision), ("recall", recall), ("f1", f1)):
        assert list(got[name]) == ["a", "b", "c", "d"]
        assert list(got[name].values()) == pytest.approx(want, abs=1e-15), name
        assert got[f"macro_{name}"] == pytest.approx(sum(want) / 4, abs=1e-15), name
    assert got["macro_recall"] == pytest.approx((0.75 + 0.5 + 0.6 + 0) / 4)


# ---- outputs -----------------------------------------------------------------------------------


def test_the_model_file_reloads_to_the_training_evaluation(mlp_result, mnist, tmp_path):
    model_path = tmp_path / "models" / "mlp.pt"
    again = save_verified_model(mlp_result, mnist, model_path)
    assert torch.equal(again.predictions, mlp_result.evaluation.predictions)
    assert again.accuracy == mlp_result.evaluation.accuracy

    # The file's model takes raw uint8 pixels and returns probabilities; its network, fed
    # normalised batches as in training, gives the training-time evaluation exactly.
    model, saved = load_model(model_path)
    assert isinstance(model, PixelClassifier) and not model.training
    assert saved["net"] == "mlp" and saved["classes"] == mnist.classes
    assert saved["input_dtype"] == "uint8" and saved["output"] == "probabilities"
    assert model.mean.tolist() == saved["mean"] == [0.5]
    test = Batches(
        mnist.test_images, mnist.test_labels, 1024, Normalizer(saved["mean"], saved["std"])
    )
    with thread_count(MLP_CONFIG.threads):  # as in training: thread count can change last bits
        reloaded = evaluate(model.net, test)
        by_pixels = evaluate_pixels(model, mnist.test_images, mnist.test_labels, batch_size=100)
        probs = model(mnist.test_images[:8]).detach()
    assert reloaded.loss == mlp_result.evaluation.loss
    assert torch.equal(reloaded.predictions, mlp_result.evaluation.predictions)
    assert torch.equal(by_pixels.predictions, mlp_result.evaluation.predictions)
    assert by_pixels.loss == pytest.approx(mlp_result.evaluation.loss, rel=1e-5)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(8))


@pytest.fixture(scope="module")
def mlp_reports(mlp_result, mnist, tmp_path_factory) -> tuple[dict, list[Path], Path]:
    """`write_reports` of the module's MLP run: (metrics, the files written, their folder)."""
    folder = tmp_path_factory.mktemp("mlp") / "reports"
    metrics, paths = write_reports(mlp_result, mnist, folder)
    return metrics, paths, folder


def test_reports_are_the_run_s_files_with_numbers_only_metrics(mlp_result, mlp_reports):
    metrics, paths, folder = mlp_reports
    names = {p.name for p in paths}
    assert names == {
        "metrics.json",
        "details.json",
        "run.json",
        "per_class.json",
        "history.csv",
        "confusion.json",
        "loss.png",
        "confusion_matrix.png",
        "per_class_accuracy.png",
        "predictions.png",
    }
    assert all(p.stat().st_size > 0 for p in paths)
    headline = json.loads((folder / "metrics.json").read_text())
    details = json.loads((folder / "details.json").read_text())
    assert metrics == headline | details and not headline.keys() & details.keys()
    assert headline["test_accuracy"] == mlp_result.evaluation.accuracy
    assert details["test_samples"] == 300
    described = json.loads((folder / "run.json").read_text())
    assert described["data_source"] == "synthetic"
    # numbers only, and few: a table of them (dvc metrics show) fits a terminal
    assert set(headline) == {"test_accuracy", "test_loss", "macro_f1", "train_seconds"}
    assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics


def test_per_class_json_holds_accuracy_precision_recall_and_f1(mnist, mlp_reports):
    metrics, _, folder = mlp_reports
    per_class = json.loads((folder / "per_class.json").read_text())
    assert set(per_class["per_class_accuracy"]) == set(mnist.classes)
    # Recall is per-class accuracy under its other name; precision and F1 come with it.
    for name in ("precision", "recall", "f1"):
        assert list(per_class[name]) == mnist.classes
    assert list(per_class["recall"].values()) == pytest.approx(
        [a or 0.0 for a in per_class["per_class_accuracy"].values()]
    )
    assert metrics["macro_f1"] == pytest.approx(np.mean(list(per_class["f1"].values())))


def test_confusion_json_counts_are_the_confusion_matrix(mlp_result, mnist, mlp_reports):
    # confusion.json: one record per test sample, counts equal to the confusion matrix.
    records = json.loads((mlp_reports[2] / "confusion.json").read_text())
    assert len(records) == 300
    cm = mlp_result.evaluation.confusion(10)
    idx = {name: i for i, name in enumerate(mnist.classes)}
    counted = np.zeros_like(cm)
    for r in records:
        counted[idx[r["actual"]], idx[r["predicted"]]] += 1
    np.testing.assert_array_equal(counted, cm)
    from sklearn.metrics import confusion_matrix

    np.testing.assert_array_equal(
        cm, confusion_matrix(mnist.test_labels.numpy(), mlp_result.evaluation.predictions.numpy())
    )


def test_one_name_per_metric_in_history_csv_metrics_json_and_mlflow(mlp_result, mlp_reports):
    metrics, _, folder = mlp_reports
    header = (folder / "history.csv").read_text().splitlines()[0]
    # One name per metric: history.csv's columns are the per-epoch MLflow metrics' names, and
    # the run-level MLflow metrics are metrics.json's keys, flattened.
    assert header == "epoch," + ",".join(mlp_result.history[0].metrics())
    final = final_metrics(metrics)
    assert {"mean_epoch_seconds", "train_seconds", "eval_seconds"} <= set(final)
    # The MLflow metric tab opens on the curves: no per-class bars among the run's metrics.
    assert not any("." in k for k in final), sorted(final)
    assert {"macro_precision", "macro_recall", "macro_f1"} <= set(final)
    assert not {"epoch_seconds", "class_accuracy"} & {k.split(".")[0] for k in metrics}


def test_a_model_file_that_predicts_otherwise_is_not_left_behind(
    mlp_result, mnist, tmp_path, monkeypatch
):
    from appliedtorch.classify.artifacts import outputs
    from appliedtorch.core.errors import AppliedTorchError

    real = outputs.load_model

    def wrong_normalisation(path):
        model, saved = real(path)
        model.std.mul_(3)
        return model, saved

    monkeypatch.setattr(outputs, "load_model", wrong_normalisation)
    path = tmp_path / "mlp.pt"
    with pytest.raises(AppliedTorchError, match=r"predicts otherwise .* on [1-9]\d* of 300 test"):
        save_verified_model(mlp_result, mnist, path)
    assert not path.exists()


# ---- stages end to end -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "dataset", "experiment", "section", "sizes", "min_accuracy"),
    [
        ("train_mlp", "mnist", "mnist-mlp", {"epochs": 2, "train_limit": 800}, (1000, 200), 0.3),
        # Four CNN steps learn little; the in-process CNN test checks learning.
        ("train_cnn", "cifar10", "cifar10-cnn", {"epochs": 2, "train_limit": 256}, (300, 100), 0),
    ],
)
def test_stage_end_to_end(
    stage, dataset, experiment, section, sizes, min_accuracy, tmp_path, tracking_uri, params_file
):
    name = stage.removeprefix("train_")
    data_dir = tmp_path / "data" / "raw" / dataset
    download(dataset, data_dir, source="synthetic", synthetic_sizes=sizes)
    params = params_file({"device": "cpu", name: section})
    model, reports = tmp_path / "models" / f"{name}.pt", tmp_path / "reports" / name
    proc = run_script(
        "stages/train.py", "--section", name,
        "--params", params, "--data", data_dir, "--model", model, "--reports", reports,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 2: train loss" in proc.stderr
    assert "reloaded model accuracy" in proc.stderr

    metrics = json.loads((reports / "metrics.json").read_text())
    metrics |= json.loads((reports / "details.json").read_text())
    assert min_accuracy <= metrics["test_accuracy"] <= 1 and metrics["epochs"] == 2
    assert metrics["train_samples"] == section["train_limit"]
    _, saved = load_model(model)
    assert saved["net"] == name and saved["test_accuracy"] == metrics["test_accuracy"]

    mlflow.set_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    check_run_params_and_tags(run, load_params(params), name, dataset)
    check_run_metrics(client, run, metrics)
    check_logged_model(exp, saved, load_dataset(dataset, data_dir))
    described = json.loads((reports / "run.json").read_text())
    assert run.data.tags["compute_dtype"] == described["compute_dtype"]
    # how the stage's OpenMP threads waited: the suite's OMP_WAIT_POLICY, which it kept
    expected = openmp.decide(dict(os.environ)).tag()
    assert run.data.tags["openmp_wait"] == described["openmp_wait"] == expected
    assert "openmp_wait" not in metrics  # it describes the run: not a DVC metric


def check_run_params_and_tags(run, params, name: str, dataset: str) -> None:
    """Every key of the section is a run param (the recipe keys included); the data's tags."""
    assert run.data.params[f"{name}.epochs"] == "2"
    logged_params = run_params(params, name)
    assert {k: "null" if v is None else str(v) for k, v in logged_params.items()} == {
        k: v for k, v in run.data.params.items() if k in logged_params
    }
    assert {
        f"{name}.optimizer",
        f"{name}.scheduler",
        f"{name}.label_smoothing",
    } <= logged_params.keys()
    assert run.data.tags["data.source"] == "synthetic"
    assert run.data.tags[f"data.{dataset}.md5"].endswith(".dir")


def check_run_metrics(client, run, metrics: dict) -> None:
    """One name per metric: the run's metrics are metrics.json's numbers under the same keys,
    plus the two per-epoch curves that have no summary value (and MLflow's own system/* use)."""
    numbers = {k for k, v in flatten(metrics).items() if isinstance(v, (int, float))}
    logged = {k for k in run.data.metrics if not k.startswith("system/")}
    assert logged == numbers | {"epoch_seconds", "lr"}
    assert "system/cpu_utilization_percentage" in run.data.metrics  # tracking.system_metrics
    assert run.data.metrics["mean_epoch_seconds"] == metrics["mean_epoch_seconds"]
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(metrics["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "per_class.json", "history.csv", "confusion.json"} <= artifacts
    assert metrics["macro_f1"] == run.data.metrics["macro_f1"]
    assert not any(k.startswith("precision.") for k in run.data.metrics)


def check_logged_model(exp, saved: dict, data: ImageData) -> None:
    """The logged model takes uint8 pixels and returns probabilities; its signature says so and
    its input example is the first test images."""
    (logged,) = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id], output_format="list"
    )
    model_uri = f"models:/{logged.model_id}"
    info = mlflow.models.get_model_info(model_uri)
    (spec,) = info.signature.inputs.inputs
    (out,) = info.signature.outputs.inputs
    assert (spec.type, spec.shape) == (np.dtype("uint8"), (-1, *saved["input_shape"]))
    assert (out.type, out.shape) == (np.dtype("float32"), (-1, 10))
    example = mlflow.models.Model.load(model_uri).load_input_example()
    assert example.dtype == np.uint8 and np.array_equal(example, data.test_images[:4].numpy())
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    probs = pyfunc.predict(data.test_images[:3].numpy())
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_cnn_pools_before_relu_exactly_like_the_tutorial_order():
    torch.manual_seed(0)
    cnn = CNN(dropout=0.0)
    x = torch.randn(4, 3, 32, 32)

    def tutorial_forward(x):  # the tutorial's pool(relu(conv(x)))
        for conv in (cnn.conv1, cnn.conv2, cnn.conv3):
            x = cnn.pool(torch.relu(conv(x)))
        return cnn.fc2(torch.relu(cnn.fc1(x.flatten(1))))

    ours = cnn(x)
    grads_ours = torch.autograd.grad(ours.square().sum(), list(cnn.parameters()))
    theirs = tutorial_forward(x)
    grads_theirs = torch.autograd.grad(theirs.square().sum(), list(cnn.parameters()))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    for a, b in zip(grads_ours, grads_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
