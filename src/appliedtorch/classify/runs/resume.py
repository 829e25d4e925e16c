"""Resumable classifier training: the resume state, written atomically after every epoch.

    resume = ResumeState.open(resume_path("models/mlp.pt"), fingerprint(params, tags), world)
    with stage_run(..., resume_run_id=resume.run_id) as run:
        resume.run_id = run.run_id
        result = train_classifier(data, config, resume=resume, world=world)
        ...                       # write the model file and reports
        resume.remove()           # only after everything succeeded

The resume state (`models/.mlp.resume`, beside the model file: git-ignored, not a DVC output)
holds what the rest of the run depends on: model, optimizer and scheduler state, every RNG state
(torch's global one, which drives dropout; the generators that shuffle and augment; CUDA's,
Python's and NumPy's), the finished epochs' history, the MLflow run id and a fingerprint of the
params and data. A rerun after a kill resumes after the last finished epoch and ends, on the
CPU, with a model and metrics bit-identical to an uninterrupted run (timings aside). A resume
state with another fingerprint, or one that cannot be read, is reported and ignored; so is one
that no longer fits the code (same params, but the model's layers or shapes changed: checked
before anything is loaded, so the fresh start keeps its fresh weights) or that has more epochs
done than the run has. A file left under the old name (`models/.mlp.ckpt`) is removed unread.

Under torchrun every process has its own random streams (dropout, crops and flips), so the
state holds one set per rank: at each save, rank 0 gathers them (`World.gather_objects`) and
writes the one file, atomically, with the world size; a kill can therefore never leave ranks'
parts from different epochs. On resume rank 0 reads and checks the file and broadcasts it, so
every rank restores the same epoch, each its own streams, before training continues. A state
written by another number of processes is reported and ignored, like one with other params
(the random streams, and the sums' order, depend on the number of processes). Only rank 0
knows the MLflow run id; it is in the state rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from appliedtorch.classify.runs.distributed import SINGLE, World
from appliedtorch.classify.training.results import EpochStats
from appliedtorch.core.params import short
from appliedtorch.core.utils import is_regular, json_md5, save_torch

log = logging.getLogger(__name__)

FORMAT = 3  # bump when the layout of the saved state changes: older resume states are then ignored


def resume_path(model_path: str | os.PathLike) -> Path:
    """Where the run that writes `model_path` keeps its resume state: models/mlp.pt -> .mlp.resume."""
    model_path = Path(model_path)
    return model_path.with_name(f".{model_path.stem}.resume")


def fingerprint(*parts: dict[str, Any]) -> str:
    """A stable hash of everything that determines a run's result (params, data hash, device)."""
    merged: dict[str, Any] = {"format": FORMAT}
    for part in parts:
        merged.update(part)
    return json_md5(merged)


class ResumeState:
    """The training state saved at the end of each epoch, and the one loaded to resume from."""

    def __init__(
        self,
        path: str | os.PathLike,
        fingerprint: str,
        world: World = SINGLE,
        epochs: int | None = None,
    ):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.world = world  # every rank saves and restores; rank 0 alone reads and writes the file
        self.epochs = epochs  # the run's epochs: a state past them is not this run's
        self.saved: dict[str, Any] | None = None  # the loaded state that training resumes from
        self.run_id: str | None = None  # the MLflow run the epochs belong to

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        fingerprint: str,
        world: World = SINGLE,
        epochs: int | None = None,
    ) -> ResumeState:
        """The resume state at `path`, loaded when it was saved with the same `fingerprint` and
        number of processes (and, given `epochs`, no more epochs done than the run has). Under
        torchrun every rank calls it and gets rank 0's reading."""
        state = cls(path, fingerprint, world, epochs)
        saved = state._load() if world.is_main else None
        state.saved = world.broadcast_object(saved)
        if state.saved is not None:
            state.run_id = state.saved.get("run_id")
        return state

    def _load(self) -> dict[str, Any] | None:
        """The saved state if it can be resumed from, else None (reported)."""
        old = self.path.with_suffix(".ckpt")  # the name before the rename: never resumed from
        # A kill while saving leaves the temporary file of the atomic write: not a resume state.
        for stale in (old, *self.path.parent.glob(f".{self.path.name}.*.tmp")):
            if stale != self.path:
                stale.unlink(missing_ok=True)
        if not self.path.exists():
            return None
        try:
            if not is_regular(self.path):  # a FIFO would block torch.load for ever
                raise OSError("not a regular file")
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: start fresh, say so
            log.warning(
                "ignoring unreadable resume state %s (%s); training from scratch", self.path, exc
            )
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            log.warning(  # (a state of another FORMAT has another fingerprint too)
                "ignoring resume state %s: it was written with other params or data; "
                "training from scratch (it is replaced after the first epoch)",
                self.path,
            )
            return None
        size = saved.get("world_size")
        if size != self.world.size or len(saved.get("rng") or ()) != size:
            log.warning(
                "ignoring resume state %s: it was written by %s process(es), this run has %d; "
                "training from scratch (it is replaced after the first epoch)",
                self.path,
                size,
                self.world.size,
            )
            return None
        problem = self._layout_problem(saved)
        if problem:
            log.warning(
                "ignoring resume state %s: %s; training from scratch (it is replaced after "
                "the first epoch)",
                self.path,
                problem,
            )
            return None
        log.info(
            "resuming from %s: %d epoch(s) done, MLflow run %s",
            self.path,
            saved["epoch"],
            saved.get("run_id"),
        )
        return saved

    def _layout_problem(self, saved: dict[str, Any]) -> str | None:
        """Why a state with the right fingerprint still cannot be resumed from, or None."""
        epoch = saved.get("epoch")
        if type(epoch) is not int or epoch < 1:
            return f"its epoch is {short(epoch)}, not a count of finished epochs"
        if self.epochs is not None and epoch > self.epochs:
            return f"it has {epoch} epochs done, more than this run's {self.epochs}"
        history = saved.get("history")
        if not isinstance(history, list) or len(history) != epoch:
            return f"its history does not hold one entry per epoch done ({epoch})"
        if not all(isinstance(saved.get(k), dict) for k in ("model", "optimizer")):
            return "it lacks the model or optimizer state"
        fields = {f.name for f in dataclasses.fields(EpochStats)}
        for entry in history:
            if not isinstance(entry, dict) or set(entry) != fields:
                return "its history entries are not the epochs' statistics"
            if not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry.values()
            ):
                return "its history holds values that are not numbers"
        return _rng_problem(saved["rng"])

    def fits(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> str | None:
        """Why the saved model and optimizer state do not fit these objects (the model code
        changed since it was saved: other layers or shapes), or None when they do."""
        saved = self.saved or {}
        want = model.state_dict()
        got = saved.get("model", {})
        if got.keys() != want.keys():
            differ = sorted(got.keys() ^ want.keys())
            return f"the model has other layers now ({len(differ)} differ, e.g. '{differ[0]}')"
        for key, tensor in want.items():
            other = got[key]
            if not isinstance(other, torch.Tensor) or other.shape != tensor.shape:
                return f"the model's '{key}' has another shape now"
        groups = saved["optimizer"].get("param_groups")
        mine = optimizer.state_dict()["param_groups"]
        if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
            len(g["params"]) for g in mine
        ]:
            return "the optimizer has other parameter groups now"
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for index, values in (saved["optimizer"].get("state") or {}).items():
            for value in values.values():
                if (
                    isinstance(value, torch.Tensor)
                    and value.ndim
                    and (
                        not isinstance(index, int)
                        or index >= len(params)
                        or value.shape != params[index].shape
                    )
                ):
                    return "the optimizer's state has other shapes now"
        return None

    @property
    def epochs_done(self) -> int:
        """Epochs finished by the saved run (0 when starting fresh)."""
        return int(self.saved["epoch"]) if self.saved else 0

    @property
    def tuning(self) -> dict[str, Any] | None:
        """What `auto` chose for the saved run (`Tuning.as_record`), or None."""
        saved = (self.saved or {}).get("tuning")
        return saved if isinstance(saved, dict) else None

    @property
    def history(self) -> list[dict[str, Any]]:
        """The finished epochs' statistics, as saved."""
        return list(self.saved["history"]) if self.saved else []

    def save(
        self,
        epoch: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: Mapping[str, torch.Generator],
        history: Sequence[dict[str, Any]],
        tuning: dict[str, Any] | None = None,
    ) -> None:
        """Write everything training needs to continue after `epoch`, atomically: a kill leaves
        the previous state whole. Under torchrun every rank calls it (it gathers every rank's
        random streams); rank 0 writes. `tuning`: what `auto` chose (bf16, threads), which
        the resumed run keeps instead of timing again."""
        streams = self.world.gather_objects(_rng_state(generators))
        if not self.world.is_main:
            return
        state = {
            "format": FORMAT,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "world_size": self.world.size,
            "rng": streams,  # one per rank, in rank order
            "history": list(history),
            "tuning": tuning,
            "fingerprint": self.fingerprint,
            "run_id": self.run_id,
        }
        save_torch(state, self.path)

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        generators: Mapping[str, torch.Generator],
    ) -> int:
        """Load the saved state into freshly built objects (this rank's random streams); return
        the last finished epoch."""
        saved = self.saved
        if saved is None:
            return 0
        problem = self.fits(model, optimizer)
        if problem:  # checked before loading anything: a fresh start keeps the fresh weights
            log.warning(
                "ignoring resume state %s: %s; training from scratch (it is replaced after the "
                "first epoch)",
                self.path,
                problem,
            )
            self.saved = None
            return 0
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        _set_rng_state(saved["rng"][self.world.rank], generators)
        return int(saved["epoch"])

    def remove(self) -> None:
        """Delete the resume state once the run's outputs are written."""
        self.path.unlink(missing_ok=True)


def _rng_problem(streams: Sequence[Any]) -> str | None:
    """Why saved random streams cannot be set, or None: each process's torch, Python and NumPy
    states are set for real (and this process's own put back after), its generators' states
    must be byte tensors."""
    current = _rng_state({})
    try:
        for rng in streams:
            generators = rng["generators"]
            if not isinstance(generators, dict) or not all(
                isinstance(g, torch.Tensor) and g.dtype == torch.uint8 for g in generators.values()
            ):
                return "its random streams are not generator states"
            _set_rng_state({**rng, "cuda": []}, {})
    except Exception as exc:  # noqa: BLE001 - any malformed part: the state cannot be resumed
        return f"its random streams cannot be set ({type(exc).__name__})"
    finally:
        _set_rng_state(current, {})
    return None


def _rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """This process's random streams (NumPy's key as a list: torch.load(weights_only) reads it)."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global state
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "generators": {name: g.get_state() for name, g in generators.items()},
        "python": random.getstate(),
        "numpy": {
            **np_state,
            "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()},
        },
    }


def _set_rng_state(rng: dict[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    for name, generator in generators.items():
        generator.set_state(rng["generators"][name])
    random.setstate(rng["python"])
    np_state = rng["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {**np_state["state"], "key": key}})  # noqa: NPY002
