"""`mlp.seeds` / `cnn.seeds`: several members in one run, their statistics, and their ensemble.

    python stages/train.py --config mlp ...   # with mlp.seeds: 5 in params.yaml
    result = train_seeds(data, params.mlp, seed=42)   # params.mlp.seeds members
    result.evaluation.accuracy                        # the ensemble's (mean probabilities)
    [m.evaluation.accuracy for m in result.members]   # each member's

One training run is one draw: member k trains with seed `seed + k` (weight initialisation,
dropout, shuffling and augmentation all follow from it) and is otherwise the same run. The
members train one after another in this process, each bit-identical to a `seeds: 1` run with
seed `seed + k`; with `members_together` (true, or auto on CUDA) they train as one vmapped model
(runs/together.py), each equal to that run within float tolerance (dropout masks aside). On the
CPU one after another is the measured choice (benchmarks/members.py). `bf16: auto` and `threads: auto` are
resolved (timed) once, for member 0, and the others train with its choice.

The saved and logged model is the members' `Ensemble` (a deep ensemble: their probabilities
averaged). metrics.json's `test_accuracy`, `test_loss` and macro scores are the ensemble's; the
members' mean, sample standard deviation and 95 % confidence interval (Student's t) are beside
them as `<metric>_mean`, `_sd`, `_ci95_low` and `_ci95_high` (`SUMMARIZED`). Each member's numbers
are in `members.csv` and in MLflow as `member_<metric>` with step = member. With `seeds: 1`
nothing of this appears: the run and its files are the single net's, as before.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliedtorch.classify.nets.models import Ensemble
from appliedtorch.classify.runs.distributed import SINGLE, World
from appliedtorch.classify.runs.resume import ResumeState, resume_path
from appliedtorch.classify.runs.together import together, train_together
from appliedtorch.classify.training.batches import Batches, Normalizer
from appliedtorch.classify.training.loop import evaluate, train_classifier
from appliedtorch.classify.training.results import EpochStats, Evaluation, TrainResult
from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.core.utils import thread_count
from appliedtorch.machine.hardware import flush_denormals

if TYPE_CHECKING:
    import pandas as pd

    from appliedtorch.classify.params import ClassifierParams
    from appliedtorch.data.loading import ImageData

log = logging.getLogger(__name__)

# The member values metrics.json summarises (mean, sd, 95 % CI); members.csv has these and more.
SUMMARIZED = ("test_accuracy", "test_loss", "macro_f1")
CONFIDENCE = 0.95


def member_seed(seed: int, member: int) -> int:
    """The seed member `member` trains with: member 0 is the `seeds: 1` run."""
    return seed + member


def check_launch(config: ClassifierParams) -> None:
    """Refuse several members under torchrun (one line, before any work): each member would
    need the whole process group, and the ensemble's outputs are written by one process."""
    processes = os.environ.get("WORLD_SIZE", "1")
    if config.seeds > 1 and processes.isdigit() and int(processes) > 1:
        s = config.section
        raise AppliedTorchError(
            f"{s}.seeds: {config.seeds} members under torchrun ({processes} processes) is not "
            f"supported; run the stage without torchrun, or set {s}.seeds: 1"
        )


# --------------------------------------------------------------------------------------------
# Resume: one state per member


class MemberStates:
    """The resume states of a run's members: member 0's is the `seeds: 1` file (models/.mlp.resume),
    member k's `models/.mlp.member<k>.resume`. A finished member's state stays until the run's
    outputs are written, so a killed run retrains only the unfinished members."""

    def __init__(self, states: Sequence[ResumeState]):
        self.states = list(states)

    @classmethod
    def open(
        cls,
        model_path: str | os.PathLike,
        fingerprint: str,
        world: World,
        epochs: int,
        members: int,
    ) -> MemberStates:
        paths = [member_resume_path(model_path, k) for k in range(members)]
        return cls([ResumeState.open(p, fingerprint, world, epochs) for p in paths])

    @property
    def epochs_done(self) -> int:
        """The most epochs any member's saved state has finished (0: no member started)."""
        return max(s.epochs_done for s in self.states)

    @property
    def run_id(self) -> str | None:
        """The MLflow run the saved members belong to (None: a fresh start)."""
        return next((s.run_id for s in self.states if s.run_id), None)

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        for state in self.states:
            state.run_id = value

    def member(self, k: int) -> ResumeState:
        return self.states[k]

    def remove(self) -> None:
        """Delete every member's state once the run's outputs are written."""
        for state in self.states:
            state.remove()


def member_resume_path(model_path: str | os.PathLike, member: int) -> Path:
    """models/mlp.pt -> models/.mlp.resume (member 0), models/.mlp.member1.resume, ..."""
    path = resume_path(model_path)
    return path if member == 0 else path.with_name(f"{path.stem}.member{member}{path.suffix}")


def open_resume(
    model_path: str | os.PathLike, fingerprint: str, world: World, config: ClassifierParams
) -> ResumeState | MemberStates:
    """The run's resume state: `ResumeState` for one net, `MemberStates` for several."""
    if config.seeds == 1:
        return ResumeState.open(resume_path(model_path), fingerprint, world, config.epochs)
    return MemberStates.open(model_path, fingerprint, world, config.epochs, config.seeds)


# --------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass
class MemberEpoch(EpochStats):
    """A member's epoch: its per-epoch metrics are logged as `member_<k>/<metric>`, step=epoch."""

    member: int = 0

    def metrics(self) -> dict[str, float]:
        return {f"member_{self.member}/{k}": v for k, v in super().metrics().items()}


def train_seeds(
    data: ImageData,
    config: ClassifierParams,
    *,
    seed: int = 0,
    device: str = "cpu",
    callback: Callable[[EpochStats], None] | None = None,
    resume: ResumeState | MemberStates | None = None,
    world: World = SINGLE,
) -> TrainResult:
    """`train_classifier` for `seeds: 1`; else every member, one after another, and their
    ensemble (`TrainResult.members` holds each member's result)."""
    if config.seeds == 1:
        assert not isinstance(resume, MemberStates)  # open_resume gives one net one state
        return train_classifier(
            data, config, seed=seed, device=device, callback=callback, resume=resume, world=world
        )
    check_launch(config)
    if world.distributed:
        raise AppliedTorchError(f"{config.section}.seeds > 1 cannot train under torchrun")
    resumed = isinstance(resume, MemberStates) and resume.epochs_done > 0
    if together(config, device, resumed=resumed, world=world):
        callbacks = [partial(member_epoch, callback, k) for k in range(config.seeds)]
        members = train_together(data, config, seed=seed, device=device, callbacks=callbacks)
        return ensemble_result(members, data, config)
    members: list[TrainResult] = []
    for k in range(config.seeds):
        log.info("member %d of %d (seed %d)", k + 1, config.seeds, member_seed(seed, k))
        each = config
        if members:  # `auto` was timed once, for member 0: the others take its choice
            each = config.model_copy(
                update={"bf16": members[0].bf16, "threads": members[0].threads}
            )

        state = resume.member(k) if isinstance(resume, MemberStates) else None
        members.append(
            train_classifier(
                data,
                each,
                seed=member_seed(seed, k),
                device=device,
                callback=partial(member_epoch, callback, k),
                resume=state,
                world=world,
            )
        )
    return ensemble_result(members, data, config)


def member_epoch(callback: Callable[[EpochStats], None] | None, k: int, stats: EpochStats) -> None:
    """Hand member `k`'s epoch to the run's callback as a `MemberEpoch`."""
    if callback is not None:
        callback(MemberEpoch(**dataclasses.asdict(stats), member=k))


def ensemble_result(
    members: Sequence[TrainResult], data: ImageData, config: ClassifierParams
) -> TrainResult:
    """The members' `Ensemble` as one result: its own test evaluation, the members' mean
    history (their summed times: what the run cost) and the members themselves."""
    first = members[0]
    model = Ensemble([m.model for m in members]).eval()
    return dataclasses.replace(
        first,
        model=model,
        config=config,
        history=mean_history(members),
        evaluation=evaluate_ensemble(model, data, first),
        members=list(members),
    )


def evaluate_ensemble(model: Ensemble, data: ImageData, first: TrainResult) -> Evaluation:
    """The ensemble on the test images the members were evaluated on, as they were (device,
    normalisation, memory format, bf16 and threads)."""
    config = first.config
    device = next(model.parameters()).device
    normalize = Normalizer(first.mean, first.std, device, config.channels_last)
    limit = config.train_limit
    images, labels = data.test_images[:limit], data.test_labels[:limit]
    test = Batches(images, labels, config.eval_batch_size, normalize)
    with thread_count(first.threads), flush_denormals(device):
        return evaluate(model, test, first.bf16)


def mean_history(members: Sequence[TrainResult]) -> list[EpochStats]:
    """Per epoch: the members' mean losses and accuracy, their summed training and evaluation
    seconds (an epoch of the whole run) and the learning rate (the same for every member)."""
    out = []
    for epochs in zip(*(m.history for m in members), strict=True):
        n = len(epochs)
        out.append(
            EpochStats(
                epoch=epochs[0].epoch,
                train_loss=sum(e.train_loss for e in epochs) / n,
                test_loss=sum(e.test_loss for e in epochs) / n,
                test_accuracy=sum(e.test_accuracy for e in epochs) / n,
                epoch_seconds=sum(e.epoch_seconds for e in epochs),
                eval_seconds=sum(e.eval_seconds for e in epochs),
                lr=epochs[0].lr,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Statistics


def statistics(values: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """Mean, sample standard deviation (ddof=1) and the `confidence` interval of the mean from
    Student's t with n - 1 degrees of freedom: mean ± t * sd / sqrt(n). Needs two values."""
    from scipy import stats

    n = len(values)
    if n < 2:
        raise ValueError(f"statistics need at least 2 values (got {n})")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "ci95_low": mean - half, "ci95_high": mean + half}


def member_values(result: TrainResult) -> list[dict[str, float]]:
    """One row per member (the run's own net when it has none): its test accuracy, test loss,
    macro F1 (as metrics.json's, by scikit-learn), last training loss and training seconds."""
    from sklearn.metrics import precision_recall_fscore_support

    rows = []
    for k, member in enumerate(result.members or [result]):
        ev = member.evaluation
        labels = list(range(len(member.classes)))
        f1 = precision_recall_fscore_support(
            ev.labels.numpy(),
            ev.predictions.numpy(),
            labels=labels,
            zero_division=0,
            average="macro",
        )[2]
        rows.append(
            {
                "member": k,
                "test_accuracy": ev.accuracy,
                "test_loss": ev.loss,
                "macro_f1": float(f1),
                "train_loss": member.history[-1].train_loss,
                "train_seconds": member.train_seconds,
            }
        )
    return rows


def member_frame(result: TrainResult) -> pd.DataFrame:
    """members.csv: `member_values` as a table, one row per member."""
    import pandas as pd

    return pd.DataFrame(member_values(result))


def seed_summary(result: TrainResult) -> dict[str, Any]:
    """metrics.json's statistics over the members: `<metric>_mean`, `_sd`, `_ci95_low` and
    `_ci95_high` for each of `SUMMARIZED` (the count is the `seeds` param). Empty for a single
    net (`seeds: 1`)."""
    if not result.members:
        return {}
    rows = member_values(result)
    out: dict[str, Any] = {}
    for name in SUMMARIZED:
        for stat, value in statistics([r[name] for r in rows]).items():
            out[f"{name}_{stat}"] = value
    return out


def member_metrics(result: TrainResult) -> list[dict[str, float]]:
    """Each member's MLflow metrics (`member_test_accuracy`, ...), logged with step = member;
    none for a single net."""
    if not result.members:
        return []
    return [{f"member_{k}": row[k] for k in SUMMARIZED} for row in member_values(result)]
