"""The tutorial's "extend it" list as params: deeper and residual nets, batch norm, optimizers,
schedulers, label smoothing and flip test-time augmentation, each checked against what it must
compute; and the tutorial's defaults leave its nets and model files exactly as they were."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from appliedtorch.classify.artifacts.outputs import save_verified_model
from appliedtorch.classify.nets.models import CNN, MLP, ResNet, load_model
from appliedtorch.classify.params import CNNParams, MLPParams
from appliedtorch.classify.training.loop import model_args_for, net_name, train_classifier
from appliedtorch.classify.training.optim import make_optimizer, make_scheduler
from appliedtorch.core.errors import ParamsError
from appliedtorch.data.loading import synthetic_in_memory
from appliedtorch.params import load_params, parse_params
from benchmarks.flops import train_flops_per_sample

CPU = torch.device("cpu")
TINY = CNNParams(
    epochs=2, batch_size=32, lr=1e-3, threads=1, augment=False, channels_last=False, bf16=False
)


@pytest.fixture(scope="module")
def cifar():
    return synthetic_in_memory("cifar10", 256, 64)


def test_defaults_build_the_tutorials_nets_and_model_args(cifar):
    p = load_params("params.yaml")
    mlp, cnn = p.mlp, p.cnn
    mnist = synthetic_in_memory("mnist", 8, 8)
    # Only the arguments the tutorial's nets always had: the default model file is unchanged.
    assert model_args_for(mlp, mnist) == {"in_features": 784, "hidden_size": 128, "num_classes": 10}
    assert model_args_for(cnn, cifar) == {"in_channels": 3, "num_classes": 10, "dropout": 0.5,
                                          "image_size": 32}  # fmt: skip
    assert (net_name(mlp), net_name(cnn)) == ("mlp", "cnn")
    assert list(MLP().state_dict()) == [f"fc{i}.{w}" for i in (1, 2, 3) for w in ("weight", "bias")]
    assert list(CNN().state_dict()) == [
        f"{layer}.{w}" for layer in ("conv1", "conv2", "conv3", "fc1", "fc2")
        for w in ("weight", "bias")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("net", "shape"),
    [
        (
            MLP(hidden_layers=4, hidden_size=64, residual=True, batch_norm=True, dropout=0.2),
            (5, 1, 28, 28),
        ),
        (CNN(width=8, batch_norm=True, flip_tta=True), (5, 3, 32, 32)),
        (ResNet(width=8, flip_tta=True), (5, 3, 32, 32)),
        (ResNet(width=8, batch_norm=False, dropout=0.3), (5, 3, 32, 32)),
    ],
)
def test_every_variant_maps_images_to_ten_logits_and_learns(net, shape):
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    assert net(x).shape == (shape[0], 10)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_resnet_costs_less_arithmetic_than_the_tutorial_cnn():
    tutorial = train_flops_per_sample("cnn", {"num_classes": 10}, (3, 32, 32))
    resnet = train_flops_per_sample("resnet", {"num_classes": 10, "width": 16}, (3, 32, 32))
    assert resnet < tutorial  # 51 M against 66 M FLOPs per training image


def test_residual_mlp_adds_each_hidden_layer_to_its_input():
    torch.manual_seed(0)
    net = MLP(in_features=6, hidden_size=4, num_classes=3, hidden_layers=3, residual=True).eval()
    x = torch.randn(2, 6)
    h1 = F.relu(net.fc1(x))
    h2 = h1 + F.relu(net.fc2(h1))
    h3 = h2 + F.relu(net.fc3(h2))
    torch.testing.assert_close(net(x), net.fc4(h3), rtol=0, atol=0)


@pytest.mark.parametrize("net", [CNN(width=8, flip_tta=True), ResNet(width=8, flip_tta=True)])
def test_flip_tta_averages_an_image_and_its_mirror_when_evaluating(net):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 32, 32)
    net.eval()
    expected = 0.5 * (net.logits(x) + net.logits(x.flip(-1)))
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(net(x), net(x.flip(-1)), rtol=0, atol=0)  # mirror-invariant
    net.train()  # training sees single images: the augmentation flips them instead
    assert not torch.equal(net(x), net(x.flip(-1)))


def test_weight_decay_shrinks_weights_but_not_biases_or_norm_scales():
    for optimizer, factor in (("sgd", 1 - 0.1 * 0.5), ("adamw", 1 - 0.1 * 0.5)):
        torch.manual_seed(0)
        model = ResNet(width=4)
        config = TINY.model_copy(
            update=dict(optimizer=optimizer, lr=0.1, weight_decay=0.5, momentum=0.0)
        )
        opt = make_optimizer(model, config, CPU)
        before = {k: v.clone() for k, v in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for name, p in model.named_parameters():
            # With a zero gradient only the decay moves a parameter: w <- (1 - lr * wd) w.
            want = before[name] * factor if p.dim() >= 2 else before[name]
            torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0, msg=name)


def test_no_weight_decay_unless_asked_for_adamw_included():
    # AdamW's own default is 0.01 on every parameter: weight_decay 0 must mean none.
    for optimizer in ("adam", "adamw", "sgd"):
        opt = make_optimizer(
            ResNet(width=4), TINY.model_copy(update=dict(optimizer=optimizer)), CPU
        )
        assert [g["weight_decay"] for g in opt.param_groups] == [0.0], optimizer


def _lrs(config: CNNParams, steps_per_epoch: int) -> list[float]:
    model = nn.Linear(2, 2)
    opt = make_optimizer(model, config, CPU)
    sched = make_scheduler(opt, config, steps_per_epoch)
    out = []
    for _ in range(config.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_schedules_follow_their_formulas():
    base = TINY.model_copy(update=dict(epochs=4, lr=0.2, optimizer="sgd", step_size=2, gamma=0.1))
    spe, total = 10, 40
    # step: the tutorial's StepLR, per epoch (constant within an epoch).
    assert (
        _lrs(base.model_copy(update=dict(scheduler="step")), spe) == [0.2] * 20 + [0.2 * 0.1] * 20
    )
    assert _lrs(base.model_copy(update=dict(scheduler="constant")), spe) == [0.2] * total
    cosine = _lrs(base.model_copy(update=dict(scheduler="cosine")), spe)
    want = [0.1 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert cosine == pytest.approx(want, rel=1e-9, abs=1e-12)
    # Linear warm-up over one epoch from lr/100, then cosine over the rest.
    warm = _lrs(base.model_copy(update=dict(scheduler="cosine", warmup_epochs=1)), spe)
    assert warm[:spe] == pytest.approx([0.2 * (0.01 + 0.99 * t / spe) for t in range(spe)])
    rest = total - spe
    assert warm[spe:] == pytest.approx(
        [0.1 * (1 + math.cos(math.pi * t / rest)) for t in range(rest)]
    )
    # onecycle: lr/25 up to lr at the end of the warm-up, then down to lr/25/1e4.
    one = _lrs(base.model_copy(update=dict(scheduler="onecycle", warmup_epochs=1)), spe)
    assert one[0] == pytest.approx(0.2 / 25) and max(one) == pytest.approx(0.2, rel=1e-3)
    assert one.index(max(one)) in (spe - 1, spe) and one[-1] < 0.2 / 25 / 100
    default = _lrs(
        base.model_copy(update=dict(scheduler="onecycle")), spe
    )  # rising phase: 30 % of the steps
    # The same curve as torch's OneCycleLR (cycle_momentum off), step for step.
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.2)
    torch_one = torch.optim.lr_scheduler.OneCycleLR(opt, 0.2, total_steps=total, pct_start=0.3,
                                                    cycle_momentum=False)  # fmt: skip
    reference = []
    for _ in range(total):
        reference.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_one.step()
    assert default == pytest.approx(reference, rel=1e-9)
    # A run of two steps (torch's class divides by zero there) still gets a schedule: a rise
    # of one step peaks at once.
    assert _lrs(
        base.model_copy(update=dict(epochs=2, scheduler="onecycle", warmup_epochs=1)), 1
    ) == pytest.approx([0.2, 0.2 / 25 / 1e4])


def test_label_smoothing_changes_the_training_loss_not_the_test_loss():
    mnist = synthetic_in_memory("mnist", 1280, 200)
    config = MLPParams(epochs=4, batch_size=32, lr=2e-3, threads=1)
    plain = train_classifier(mnist, config)
    smooth = train_classifier(mnist, config.model_copy(update=dict(label_smoothing=0.3)))
    # A confident model pays for the 30 % of target mass spread over the other classes.
    assert plain.evaluation.accuracy > 0.75 and smooth.evaluation.accuracy > 0.75
    assert smooth.history[-1].train_loss > plain.history[-1].train_loss + 0.5
    # The test loss is plain cross-entropy of the trained model's logits.
    from appliedtorch.classify.training.batches import NORMALIZATION, Normalizer

    x = Normalizer(*NORMALIZATION["mnist"], CPU, False)(mnist.test_images)
    with torch.no_grad():
        ce = F.cross_entropy(smooth.model.eval()(x), mnist.test_labels).item()
    assert smooth.evaluation.loss == pytest.approx(ce, rel=1e-4)


def test_recipe_like_run_saves_a_model_that_predicts_the_same_with_tta(cifar, tmp_path):
    config = TINY.model_copy(update=dict(arch="resnet", width=8, batch_norm=True, dropout=0.0, optimizer="sgd",
                     nesterov=True, lr=0.1, weight_decay=5e-4, scheduler="onecycle",
                     label_smoothing=0.2, augment=True, flip_tta=True, channels_last=True))  # fmt: skip
    result = train_classifier(cifar, config)
    reloaded = save_verified_model(
        result, cifar, tmp_path / "cnn.pt"
    )  # raises if predictions differ
    assert reloaded.accuracy == result.evaluation.accuracy
    model, saved = load_model(tmp_path / "cnn.pt")
    assert saved["net"] == "resnet" and saved["model_args"]["flip_tta"] is True
    assert isinstance(model.net, ResNet) and model.net.flip_tta


@pytest.mark.parametrize(
    ("section", "changes", "message"),
    [
        ("cnn", {"arch": "vgg"}, r"cnn\.arch must be 'tutorial' or 'resnet' \(got 'vgg'\)"),
        ("mlp", {"optimizer": "rmsprop"}, r"mlp\.optimizer must be 'adam', 'adamw' or 'sgd'"),
        (
            "cnn",
            {"nesterov": True},
            r"cnn\.nesterov needs cnn\.optimizer: sgd with cnn\.momentum > 0",
        ),
        ("mlp", {"optimizer": "sgd", "momentum": 0.0, "nesterov": True}, r"mlp\.nesterov needs"),
        ("cnn", {"warmup_epochs": 10}, r"cnn\.warmup_epochs must be less than cnn\.epochs"),
        (
            "cnn",
            {"scheduler": "onecycle", "warmup_epochs": 0},
            r"warmup_epochs must be > 0 with cnn\.scheduler: onecycle",
        ),
        ("cnn", {"label_smoothing": 1.0}, r"cnn\.label_smoothing must be < 1 \(got 1\.0\)"),
        ("mlp", {"hidden_layers": 0}, r"mlp\.hidden_layers must be > 0"),
        (
            "mlp",
            {"batch_norm": True, "batch_size": 1},
            r"mlp\.batch_norm needs mlp\.batch_size and mlp\.train_limit > 1",
        ),
        (
            "mlp",
            {"batch_norm": True, "train_limit": 1},
            r"mlp\.batch_norm needs mlp\.batch_size and",
        ),
        (
            "mlp",
            {"hidden_layers": 256, "hidden_size": 4096},
            r"mlp\.hidden_layers x mlp\.hidden_size\^2 must be at most 268435456 weights "
            r"\(got 256 x 4096\^2: 16 GB",
        ),
        ("cnn", {"width": "wide"}, r"cnn\.width must be an integer"),
        ("cnn", {"flip_tta": "yes"}, r"cnn\.flip_tta must be true or false"),
        ("mlp", {"flip_tta": True}, r"unknown key 'mlp\.flip_tta'"),
    ],
)
def test_bad_extension_values_are_one_line_errors(section, changes, message):
    import yaml

    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw[section].update(changes)
    with pytest.raises(ParamsError, match=message) as info:
        parse_params(raw)
    assert "\n" not in str(info.value)


def test_batch_norm_never_trains_on_a_single_sample():
    """A last batch of one would stop BatchNorm1d ("Expected more than 1 value per channel"):
    with batch norm it is left out of the pass; without, it stays (the tutorial's numbers)."""
    mnist = synthetic_in_memory("mnist", 65, 16)
    config = MLPParams(epochs=1, batch_size=32, lr=1e-3, threads=1)
    result = train_classifier(mnist, config.model_copy(update=dict(batch_norm=True)))
    assert result.train_samples == 65 and math.isfinite(result.history[0].train_loss)
    from appliedtorch.classify.training.batches import NORMALIZATION, Batches, Normalizer

    normalize = Normalizer(*NORMALIZATION["mnist"], CPU, False)
    sizes = [len(y) for _, y in Batches(mnist.train_images, mnist.train_labels, 32, normalize,
                                        drop_single=True)]  # fmt: skip
    assert sizes == [32, 32]
    plain = [len(y) for _, y in Batches(mnist.train_images, mnist.train_labels, 32, normalize)]
    assert plain == [32, 32, 1]


def test_recipe_options_train_each_way(cifar):
    """Every optimizer and schedule runs in the loop and lowers the training loss."""
    for changes in ({"optimizer": "adamw", "weight_decay": 0.05, "scheduler": "cosine"},
                    {"optimizer": "sgd", "nesterov": True, "lr": 0.05, "scheduler": "onecycle"},
                    {"arch": "resnet", "width": 8, "batch_norm": True, "scheduler": "step", "step_size": 1}):  # fmt: skip
        result = train_classifier(cifar, TINY.model_copy(update=changes))
        assert all(math.isfinite(h.train_loss) for h in result.history), changes
        assert result.history[-1].train_loss < result.history[0].train_loss, changes
