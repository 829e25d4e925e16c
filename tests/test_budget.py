"""The memory and device budget: params that cannot fit this machine are refused in one line with
the estimate, before any work; the defaults fit a small machine."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from appliedtorch.classify.nets import budget as classify_budget
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.demos import budget as demos_budget
from appliedtorch.machine import budget
from appliedtorch.params import parse_params
from appliedtorch.pinn import budget as pinn_budget
from helpers import REPO, merge


def params(**over):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    return parse_params(merge(raw, {"device": "cpu", **over}))


@pytest.fixture
def machine(monkeypatch):
    """Pretend the machine has `gb` GB free."""

    def set_free(gb: float) -> None:
        monkeypatch.setattr(budget, "available_bytes", lambda device: gb * 1e9)

    return set_free


def test_the_defaults_fit_a_machine_with_2_gb_free(machine):
    machine(2)
    p = params()
    for section in ("mlp", "cnn"):
        classify_budget.check_budget(p, section)
    pinn_budget.check_budget(p)
    demos_budget.check_budget(p)


def test_a_resnet_of_width_1024_is_refused_with_its_estimate(machine):
    machine(23)
    p = params(cnn={"arch": "resnet", "width": 1024})
    with pytest.raises(AppliedTorchError) as info:
        classify_budget.check_budget(p, "cnn")
    assert re.fullmatch(
        r"cnn\.width 1024 with cnn\.arch resnet \(500 M weights\), cnn\.batch_size 128 needs "
        r"~2\d GB for weights, gradients and Adam state, activations of a batch of 128 and an "
        r"evaluation batch of 1024; this machine has 23 GB memory available; use a smaller net "
        r"or cnn\.batch_size / cnn\.eval_batch_size",
        str(info.value),
    ), info.value


def test_train_limit_shrinks_the_batches_it_counts(machine):
    wide = params(cnn={"arch": "resnet", "width": 256, "batch_size": 4096})
    small = params(cnn={"arch": "resnet", "width": 256, "batch_size": 4096, "train_limit": 32})
    big, tiny = (classify_budget.estimate("cnn", p.cnn) for p in (wide, small))
    assert (
        "activations of a batch of 4096" in big.parts
        and "activations of a batch of 32" in tiny.parts
    )
    assert tiny.total < big.total / 20


def test_sgd_without_momentum_keeps_no_optimizer_state():
    adam = classify_budget.estimate("mlp", params().mlp)
    sgd = classify_budget.estimate("mlp", params(mlp={"optimizer": "sgd", "momentum": 0.0}).mlp)
    assert (
        adam.parts["weights, gradients and Adam state"]
        == 2 * sgd.parts["weights, gradients and SGD state"]
    )


@pytest.mark.parametrize(
    ("pinn", "message"),
    [
        ({"hidden_sizes": [65536] * 3}, r"pinn\.hidden_sizes \[65536, 65536, 65536\] \(8,590 M "
         r"weights\) needs ~[\d,]+ TB for Levenberg-Marquardt's Jacobian and normal matrix; this "
         r"machine has 23 GB memory available; use fewer or narrower layers, or pinn\.lm_steps: 0$"),
        ({"hidden_sizes": [65536] * 3, "lm_steps": 0}, r".* needs ~7 TB for L-BFGS's history of 50; "),
        ({"hidden_sizes": [65536] * 3, "lm_steps": 0, "lbfgs_steps": 0}, r".* needs ~2\d\d GB for "
         r"weights, gradients and Adam state; .*; use fewer or narrower layers or fewer points$"),
        ({"hidden_sizes": [100, 100], "collocation_points": 10**6}, r"pinn\.hidden_sizes \[100, 100\] "
         r"with 1000000 points needs ~\d+ GB for Levenberg-Marquardt's"),
    ],
)  # fmt: skip
def test_a_pinn_too_big_names_its_largest_phase(machine, pinn, message):
    machine(23)
    with pytest.raises(AppliedTorchError, match=message):
        pinn_budget.check_budget(params(pinn=pinn))


def test_the_estimate_counts_the_weights_the_net_has():
    from appliedtorch.pinn.problem import PINNNet

    net = PINNNet([7, 5, 3])
    assert pinn_budget.weight_count([7, 5, 3]) == sum(p.numel() for p in net.parameters())
    cfg = params(mlp={"hidden_size": 32, "hidden_layers": 3}).mlp
    net = classify_budget.meta_net("mlp", cfg, (1, 28, 28), 10)
    assert all(p.device.type == "meta" for p in net.parameters())  # nothing allocated
    assert sum(p.numel() for p in net.parameters()) == 784 * 32 + 32 + 2 * (32 * 32 + 32) + 330


def test_a_device_the_machine_lacks_is_one_line():
    if not torch.backends.mps.is_available():
        with pytest.raises(AppliedTorchError, match=r"^device 'mps' \(Apple's GPU\) was asked for"):
            budget.check_device("mps")
    n = torch.cuda.device_count()
    name = f"cuda:{n}" if n else "cuda"
    with pytest.raises(AppliedTorchError, match=rf"^device '{name}' "):
        budget.check_device(name)
    assert budget.check_device("cpu") == torch.device("cpu")


def test_compile_needs_a_compiler(monkeypatch, tmp_path):
    assert budget.cxx_compiler() is not None  # g++ is installed here (the test would mean little)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert budget.cxx_compiler() is None
    with pytest.raises(AppliedTorchError, match=r"^mlp\.compile: true needs a C\+\+ compiler"):
        budget.check_compile("mlp.compile", torch.device("cpu"))


def test_sizes_read_well():
    assert [budget.gigabytes(n) for n in (3e5, 1.2e8, 1.54e9, 41.2e9, 7.1e12, 2.4e15)] == [
        "1 MB", "120 MB", "1.5 GB", "41 GB", "7 TB", "2,400 TB"
    ]  # fmt: skip
