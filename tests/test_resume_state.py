"""A resume state that no longer fits: other model code, more epochs than the run, a damaged
layout. Each is discarded with one warning and training starts fresh (resume.py)."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest
import torch
from torch import nn

from appliedtorch.classify.runs.resume import ResumeState
from appliedtorch.classify.training.results import EpochStats


def objects(width: int) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, torch.Generator]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()  # Adam's state (exp_avg ...) has the parameters' shapes
    return model, optimizer, {"shuffle": torch.Generator().manual_seed(1)}


def saved_state(tmp_path, width: int = 8, epoch: int = 2) -> ResumeState:
    state = ResumeState(tmp_path / ".mlp.resume", "fp")
    model, optimizer, streams = objects(width)
    history = [
        dataclasses.asdict(EpochStats(e, 0.5, 0.6, 0.8, 1.0, 0.1, 1e-3))
        for e in range(1, epoch + 1)
    ]
    state.save(epoch, model, optimizer, None, streams, history)
    return state


def test_a_fitting_state_is_restored(tmp_path):
    saved_state(tmp_path)
    resume = ResumeState.open(tmp_path / ".mlp.resume", "fp", epochs=3)
    model, optimizer, streams = objects(8)
    assert resume.restore(model, optimizer, None, streams) == 2
    assert resume.epochs_done == 2 and len(resume.history) == 2


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda: objects(16), "the model's '0.weight' has another shape now"),
        (lambda: (nn.Linear(4, 2), *objects(8)[1:]), "the model has other layers now"),
    ],
)
def test_state_from_other_model_code_is_discarded_before_loading(tmp_path, caplog, change, why):
    saved_state(tmp_path)
    resume = ResumeState.open(tmp_path / ".mlp.resume", "fp")
    model, optimizer, streams = change()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING):
        assert resume.restore(model, optimizer, None, streams) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and why in warnings[0] and "training from scratch" in warnings[0]
    assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())  # untouched
    assert resume.epochs_done == 0 and resume.history == []


def test_optimizer_state_of_other_shapes_is_discarded(tmp_path, caplog):
    state = saved_state(tmp_path)
    saved = torch.load(state.path, weights_only=True)
    saved["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3, 3)
    torch.save(saved, state.path)
    resume = ResumeState.open(state.path, "fp")
    model, optimizer, streams = objects(8)
    assert resume.restore(model, optimizer, None, streams) == 0
    assert "the optimizer's state has other shapes now" in caplog.text


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda s: s.update(epoch=7), "7 epochs done, more than this run's 5"),
        (lambda s: s.update(epoch="2"), "its epoch is '2'"),
        (lambda s: s.update(epoch=0), "its epoch is 0"),
        (lambda s: s.update(history=[]), "one entry per epoch done"),
        (lambda s: s.pop("model"), "lacks the model or optimizer state"),
        (lambda s: s["history"][0].pop("lr"), "history entries are not the epochs' statistics"),
        (lambda s: s["history"][1].update(lr="x"), "history holds values that are not numbers"),
        (lambda s: s["rng"][0].update(torch=[1, 2]), "its random streams cannot be set"),
        (lambda s: s["rng"][0].update(python="x"), "its random streams cannot be set"),
        (
            lambda s: s["rng"][0]["generators"].update(shuffle=3),
            "random streams are not generator states",
        ),
    ],
)
def test_state_with_a_bad_layout_is_ignored(tmp_path, caplog, edit, why):
    state = saved_state(tmp_path)
    saved = torch.load(state.path, weights_only=True)
    edit(saved)
    torch.save(saved, state.path)
    with caplog.at_level(logging.WARNING):
        resume = ResumeState.open(state.path, "fp", epochs=5)
    assert resume.saved is None and resume.epochs_done == 0
    assert why in caplog.text and "training from scratch" in caplog.text


def test_a_malformed_state_leaves_this_process_random_streams_as_they_were(tmp_path):
    state = saved_state(tmp_path)
    saved = torch.load(state.path, weights_only=True)
    saved["rng"][0]["python"] = "x"  # set after torch's: the check must put torch's back
    torch.save(saved, state.path)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    assert ResumeState.open(state.path, "fp").saved is None
    assert torch.equal(torch.get_rng_state(), before)


def test_a_fifo_in_place_of_the_state_is_ignored_not_waited_on(tmp_path, caplog):
    path = tmp_path / ".mlp.resume"
    os.mkfifo(path)
    with caplog.at_level(logging.WARNING):
        assert ResumeState.open(path, "fp").saved is None  # returns: nothing waits for a writer
    assert "ignoring unreadable resume state" in caplog.text
