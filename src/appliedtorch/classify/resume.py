"""Resumable classifier training: an atomic checkpoint at the end of every epoch.

    ckpt = Checkpointer.open(checkpoint_path("models/mlp.pt"), fingerprint(params, tags))
    with stage_run(..., resume_run_id=ckpt.run_id) as run:
        ckpt.run_id = run.run_id
        result = train_classifier(data, config, checkpoint=ckpt)
        ...                       # write the model and reports
        ckpt.remove()             # only after everything succeeded

The checkpoint (`models/.mlp.ckpt`, beside the model: git-ignored, not a DVC output) holds what
the rest of the run depends on: model, optimizer and scheduler state, every RNG state (torch's
global one, which drives dropout; the generator that shuffles and augments; CUDA's, Python's and
NumPy's), the finished epochs' history and timings, the MLflow run id and a fingerprint of the
params and data. A rerun after a kill resumes after the last finished epoch and ends, on the
CPU, with a model and metrics bit-identical to an uninterrupted run (timings aside). A
checkpoint with another fingerprint, or one that cannot be read, is reported and ignored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from appliedtorch.core.utils import save_torch

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of the saved state changes: old checkpoints are then ignored


def checkpoint_path(model_path: str | os.PathLike) -> Path:
    """Where the checkpoint of the run that writes `model_path` lives: models/mlp.pt -> .mlp.ckpt."""
    model_path = Path(model_path)
    return model_path.with_name(f".{model_path.stem}.ckpt")


def fingerprint(*parts: Mapping[str, Any]) -> str:
    """A stable hash of everything that determines a run's result (params, data hash, device)."""
    merged: dict[str, Any] = {"format": FORMAT}
    for part in parts:
        merged.update(part)
    return hashlib.md5(json.dumps(merged, sort_keys=True, default=str).encode()).hexdigest()


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def _is_main_process() -> bool:
    """Only rank 0 of a torchrun job writes the checkpoint (a single process is rank 0 of 1)."""
    return not _initialized() or torch.distributed.get_rank() == 0


class Checkpointer:
    """Saves training state at the end of each epoch; holds the state to resume from, if any."""

    def __init__(self, path: str | os.PathLike, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.state: dict[str, Any] | None = None  # what train_classifier resumes from
        self.run_id: str | None = None  # the MLflow run the epochs belong to

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: str) -> Checkpointer:
        """A checkpointer at `path`, loaded with the saved state when it matches `fingerprint`."""
        ckpt = cls(path, fingerprint)
        # A kill while saving leaves the temporary file of the atomic write: not a checkpoint.
        for stale in ckpt.path.parent.glob(f".{ckpt.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        if not ckpt.path.exists():
            return ckpt
        if _world_size() > 1:
            # The state (RNG, generator) is one process's; a torchrun job trains from scratch.
            log.warning("not resuming from %s: resuming is for single-process runs", ckpt.path)
            return ckpt
        try:
            state = torch.load(ckpt.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: start fresh, say so
            log.warning("ignoring unreadable checkpoint %s (%s); training from scratch", path, exc)
            return ckpt
        if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
            log.warning(
                "ignoring checkpoint %s: it was written with other params or data; "
                "training from scratch (it is replaced after the first epoch)",
                ckpt.path,
            )
            return ckpt
        ckpt.state, ckpt.run_id = state, state.get("run_id")
        log.info(
            "resuming from %s: %d epoch(s) done, MLflow run %s",
            ckpt.path,
            state["epoch"],
            ckpt.run_id,
        )
        return ckpt

    @property
    def epochs_done(self) -> int:
        """Epochs finished by the checkpointed run (0 when starting fresh)."""
        return int(self.state["epoch"]) if self.state else 0

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (from `capture`) atomically: a kill leaves the previous checkpoint whole."""
        if _is_main_process():
            save_torch({**state, "fingerprint": self.fingerprint, "run_id": self.run_id}, self.path)

    def remove(self) -> None:
        """Delete the checkpoint once the run's outputs are written."""
        if _is_main_process():
            self.path.unlink(missing_ok=True)


def capture(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Everything the training loop needs to continue after `epoch`, as tensors and plain data."""
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global state
    return {
        "format": FORMAT,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "generator": generator.get_state(),
            "python": random.getstate(),
            "numpy": {
                **np_state,
                "state": {**np_state["state"], "key": np_state["state"]["key"].tolist()},
            },
        },
        **extra,
    }


def restore(
    state: Mapping[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    generator: torch.Generator,
) -> int:
    """Load a `capture`d state into freshly built objects; return the last finished epoch."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    generator.set_state(rng["generator"])
    random.setstate(rng["python"])
    np_state = rng["numpy"]
    key = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**np_state, "state": {**np_state["state"], "key": key}})  # noqa: NPY002
    return int(state["epoch"])
