"""`members_together`: the `seeds` members trained as one vmapped model equal the members trained
one after another (same seeds, same batch orders), keep their own dropout masks, and give the
same files; where together cannot apply, one after another, said in one line."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from appliedtorch.classify.artifacts.outputs import save_verified_model
from appliedtorch.classify.nets.models import Ensemble, load_model
from appliedtorch.classify.params import CNNParams, MLPParams
from appliedtorch.classify.runs.distributed import SINGLE
from appliedtorch.classify.runs.ensemble import MemberStates, member_frame, train_seeds
from appliedtorch.classify.runs.together import VmappedStep, build_members, check_losses, together
from appliedtorch.core.errors import DivergenceError, ParamsError
from appliedtorch.params import parse_params
from helpers import REPO
from helpers.data import make_data

SEED = 3
# Adam with weight decay (its two groups) and a step schedule: the stacked optimizer must act
# as each member's own.
MLP = MLPParams(
    seeds=3,
    epochs=2,
    batch_size=64,
    threads=1,
    train_limit=320,
    weight_decay=0.01,
    scheduler="step",
    step_size=1,
)


@pytest.fixture(scope="module")
def mnist():
    return make_data("mnist", 320, 100)


@pytest.fixture(scope="module")
def pair(mnist):
    """The same members, one after another and together."""
    apart, joint = ([], []), ([], [])
    for logged, flag in zip((apart, joint), (False, True), strict=True):
        config = MLP.model_copy(update={"members_together": flag})
        result = train_seeds(mnist, config, seed=SEED, callback=logged[1].append)
        logged[0].append(result)
    return apart[0][0], joint[0][0], apart[1], joint[1]


def test_members_together_log_each_members_epochs_as_one_after_another(pair):
    *_, apart, joint = pair  # the stats the stage logs to MLflow, as `member_<k>/<metric>`

    def by_key(logged):
        return {(s.epoch, k): v for s in logged for k, v in s.metrics().items()}

    a, j = by_key(apart), by_key(joint)
    assert sorted(j) == sorted(a) and len(j) == MLP.seeds * MLP.epochs * len(apart[0].metrics())
    for key, value in a.items():
        if "seconds" not in key[1]:  # timings aside
            assert j[key] == pytest.approx(value, rel=1e-4, abs=0.01 if "accuracy" in key[1] else 0)


def test_members_together_have_the_sequential_members_weights(pair):
    apart, joint, *_ = pair
    for a, j in zip(apart.members, joint.members, strict=True):
        for (name, p), q in zip(
            a.model.state_dict().items(), j.model.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)


def test_members_together_have_the_sequential_members_metrics(pair):
    apart, joint, *_ = pair
    for a, j in zip(apart.members, joint.members, strict=True):
        for ha, hj in zip(a.history, j.history, strict=True):
            assert hj.train_loss == pytest.approx(ha.train_loss, rel=1e-4)
            assert hj.test_loss == pytest.approx(ha.test_loss, rel=1e-4)
            assert hj.test_accuracy == pytest.approx(ha.test_accuracy, abs=1e-2)
            assert hj.lr == pytest.approx(ha.lr)
    assert joint.evaluation.loss == pytest.approx(apart.evaluation.loss, rel=1e-4)


def test_members_together_are_different_runs(pair):
    _, joint, *_ = pair
    first, second = (m.model.fc1.weight for m in joint.members[:2])
    assert not torch.equal(first, second)


def test_members_together_give_the_same_model_file_and_members_table(mnist, pair, tmp_path):
    apart, joint, *_ = pair
    assert list(member_frame(joint).columns) == list(member_frame(apart).columns)
    assert len(member_frame(joint)) == MLP.seeds
    for name, result in (("apart", apart), ("joint", joint)):
        save_verified_model(result, mnist, tmp_path / f"{name}.pt")
    (a, a_file), (j, j_file) = (load_model(tmp_path / f"{n}.pt") for n in ("apart", "joint"))
    assert isinstance(j.net, Ensemble) and isinstance(a.net, Ensemble)
    assert list(j.state_dict()) == list(a.state_dict())
    assert sorted(j_file) == sorted(a_file)


def test_members_together_draw_their_own_dropout_masks(mnist):
    config = MLP.model_copy(update={"dropout": 0.5, "seeds": 2})
    members, _ = build_members(config, {"dropout": 0.5, "in_features": 784}, torch.device("cpu"), 0)
    step = VmappedStep(members[0], members, config)
    for name in step.params:  # both members the same weights: only dropout can tell them apart
        step.params[name].data[1] = step.params[name].data[0]
    images = torch.randn(2, 8, 1, 28, 28)
    images[1] = images[0]
    labels = torch.zeros(2, 8, dtype=torch.int64)
    losses = step.losses(step.params, step.buffers, images, labels)  # what the training step runs
    assert losses[0] != losses[1]


def test_a_diverging_member_is_named_with_its_step():
    losses = torch.ones(4, 3)
    losses[2, 1] = float("nan")
    with pytest.raises(DivergenceError, match=r"member 1's loss became nan at epoch 7, step 3"):
        check_losses(losses, 7, 0.5, "mlp")
    check_losses(torch.ones(4, 3), 7, 0.5, "mlp")  # finite: no error


@pytest.mark.parametrize(
    ("update", "word"),
    [({"batch_norm": True}, "batch_norm"), ({"compile": True}, "compile")],
)
def test_members_fall_back_to_one_after_another_in_one_line(caplog, update, word):
    config = MLP.model_copy(update={"members_together": True, **update})
    with caplog.at_level(logging.INFO, logger="appliedtorch.classify.runs.together"):
        assert not together(config, "cpu")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "one after another" in line and word in line


def test_members_fall_back_when_a_killed_run_resumes_mid_member(caplog):
    config = MLP.model_copy(update={"members_together": True})
    with caplog.at_level(logging.INFO, logger="appliedtorch.classify.runs.together"):
        assert not together(config, "cpu", resumed=True)
    assert "resume" in caplog.text


def test_members_together_auto_picks_one_after_another_on_the_cpu():
    assert not together(MLP, "cpu")  # auto: on the CPU one after another measured faster
    assert together(MLP.model_copy(update={"members_together": True}), "cpu")
    assert not together(MLP.model_copy(update={"members_together": True, "seeds": 1}), "cpu")


def test_killed_together_run_restarts_its_members_afresh(mnist, pair, tmp_path):
    """A together-run saves no resume state: killed after an epoch, its rerun trains every member
    from the start and ends as the uninterrupted run did."""
    config = MLP.model_copy(update={"members_together": True})

    def kill(stats):
        raise KeyboardInterrupt

    states = MemberStates.open(tmp_path / "mlp.pt", "fp", SINGLE, config.epochs, config.seeds)
    with pytest.raises(KeyboardInterrupt):
        train_seeds(mnist, config, seed=SEED, resume=states, callback=kill)
    states = MemberStates.open(tmp_path / "mlp.pt", "fp", SINGLE, config.epochs, config.seeds)
    assert states.epochs_done == 0
    rerun = train_seeds(mnist, config, seed=SEED, resume=states)
    for r, j in zip(rerun.members, pair[1].members, strict=True):
        assert [h.train_loss for h in r.history] == [h.train_loss for h in j.history]


def test_cnn_members_train_together_with_augmentation():
    cifar = make_data("cifar10", 64, 32)
    config = CNNParams(
        seeds=2,
        epochs=1,
        batch_size=16,
        width=4,
        train_limit=64,
        members_together=True,
        bf16=False,
        threads=1,
    )
    apart = train_seeds(cifar, config.model_copy(update={"members_together": False, "dropout": 0}))
    joint = train_seeds(cifar, config.model_copy(update={"dropout": 0}))
    for a, j in zip(apart.members, joint.members, strict=True):
        assert j.history[0].train_loss == pytest.approx(a.history[0].train_loss, rel=1e-4)


@pytest.mark.parametrize("value", ["sometimes", 2])
def test_bad_members_together_is_one_line(value):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["mlp"]["members_together"] = value
    with pytest.raises(ParamsError, match=r"mlp\.members_together must be") as err:
        parse_params(raw)
    assert "\n" not in str(err.value)
