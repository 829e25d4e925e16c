"""The `mlp` and `cnn` sections of params.yaml: the classifiers' nets and training recipe.

python -m appliedtorch.params params.yaml     # checks these sections with the others
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, model_validator

from appliedtorch.core.params import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_LAYERS,
    MAX_SAMPLES,
    MAX_THREADS,
    MAX_WIDTH,
    Section,
    short,
)
from appliedtorch.data.datasets import DATASETS

MAX_WEIGHTS = 2**28  # hidden-to-hidden weights of the MLP: 1 GB in float32
MAX_SEEDS = 64  # ensemble members: each is a whole training run (classify/runs/ensemble.py)

# Any dataset of the table (appliedtorch.data.datasets) trains either classifier.
DatasetName = Literal[DATASETS]  # type: ignore[valid-type]

# Choices both classifier sections offer (`auto`: where the device computes bf16 natively).
Schedule = Literal["constant", "step", "cosine", "onecycle"]
BF16 = Literal["auto"] | bool
Together = Literal["auto"] | bool


def _thread_count(value: Any) -> Any:
    """CPU threads while training: a count, auto (timed at the start: classify/training/tuning.py) or
    None (torch's default, all cores); checked here so a bad value gets one plain line."""
    if value is None or value == "auto" or (type(value) is int and 0 < value <= MAX_THREADS):
        return value
    raise ValueError(f"must be a thread count 1..{MAX_THREADS}, auto or null (got {short(value)})")


Threads = Annotated[int | Literal["auto"] | None, BeforeValidator(_thread_count)]


class ClassifierParams(Section):
    """What the MLP and CNN sections share: the training recipe. The defaults are the tutorial's
    (Adam, no weight decay, no label smoothing, no batch norm); the tutorial's "extend it" list
    (deeper nets, other optimizers, schedulers, batch norm, ...) is these keys."""

    section: ClassVar[str] = ""  # the params.yaml section, for messages across keys

    # Members trained in one run, member k with seed + k: metrics.json gets their mean, sd and 95 %
    # CI, and the model is their ensemble (classify/runs/ensemble.py). 1: one net, as the tutorial.
    seeds: int = Field(1, ge=1, le=MAX_SEEDS)
    # The members as one vmapped model (classify/runs/together.py): auto = on CUDA (on the CPU one
    # after another measured faster: benchmarks/members.py) | true | false (one after another)
    members_together: Together = "auto"
    epochs: int = Field(5, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
    lr: float = Field(0.001, gt=0)  # the peak lr with warm-up or onecycle
    batch_norm: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only (Adam's is its beta1 = 0.9)
    nesterov: bool = False  # sgd with momentum > 0 only
    # Convolution and linear weights only: biases and norm scales are not decayed (nanoGPT's
    # configure_optimizers). adam: an L2 term in the gradient; adamw: decoupled, as published.
    weight_decay: float = Field(0.0, ge=0, le=1)
    # Per step: constant | step (x gamma every step_size epochs after any warm-up) | cosine (to 0) | onecycle
    # (torch's OneCycleLR: lr/25 up to lr, then cosine down to lr/250000)
    scheduler: Schedule = "constant"
    step_size: int = Field(5, gt=0, le=MAX_EPOCHS)  # step only
    gamma: float = Field(0.1, gt=0, le=1)  # step only
    # Linear warm-up from ~0 over this many epochs (a fraction is fine). onecycle: its rising
    # phase, null = 30 % of the epochs (torch's default); the others: null = no warm-up.
    warmup_epochs: float | None = Field(None, ge=0, le=MAX_EPOCHS)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # training loss only; test_loss is plain CE
    train_limit: int | None = Field(None, gt=0, le=MAX_SAMPLES)
    eval_batch_size: int = Field(1024, gt=0, le=MAX_BATCH)
    # bfloat16 autocast: auto = where the device computes bf16 natively (machine/hardware.py)
    bf16: BF16 = False
    compile: bool = False  # torch.compile the model (first epoch pays the compile time)
    threads: Threads = None

    @property
    def experiment(self) -> str:
        """The MLflow experiment and registered model of this classifier on its dataset:
        mnist-mlp, cifar10-cnn, fashion-mnist-cnn, ..."""
        return f"{self.dataset}-{self.section}"

    @model_validator(mode="after")
    def _recipe(self) -> ClassifierParams:
        s = self.section
        if self.batch_norm and (self.batch_size == 1 or self.train_limit == 1):
            raise ValueError(
                f"{s}.batch_norm needs {s}.batch_size and {s}.train_limit > 1 (a batch of one "
                "sample has no variance)"
            )
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError(
                f"{s}.nesterov needs {s}.optimizer: sgd with {s}.momentum > 0 "
                f"(got optimizer {self.optimizer}, momentum {self.momentum:g})"
            )
        warmup = self.warmup_epochs
        if warmup is not None and warmup >= self.epochs:
            raise ValueError(
                f"{s}.warmup_epochs must be less than {s}.epochs (got {warmup:g} >= {self.epochs})"
            )
        if self.scheduler == "onecycle" and warmup == 0:
            raise ValueError(
                f"{s}.warmup_epochs must be > 0 with {s}.scheduler: onecycle (its rising phase; "
                "null = 30 % of the epochs)"
            )
        return self


class MLPParams(ClassifierParams):
    section: ClassVar[str] = "mlp"
    # What the CNN section configures and the MLP does not: fixed here, so the loop reads every
    # section alike (and `mlp.augment` in params.yaml is still an unknown key).
    augment: ClassVar[bool] = False
    flip_tta: ClassVar[bool] = False
    channels_last: ClassVar[bool] = False

    dataset: DatasetName = "mnist"
    # tutorial: 784 -> hidden -> hidden -> 10 | residual: x + layer(x) around hidden layers 2..
    arch: Literal["tutorial", "residual"] = "tutorial"
    hidden_layers: int = Field(2, gt=0, le=MAX_LAYERS)
    hidden_size: int = Field(128, gt=0, le=MAX_WIDTH)
    step_size: int = Field(2, gt=0, le=MAX_EPOCHS)
    eval_batch_size: int = Field(2048, gt=0, le=MAX_BATCH)
    bf16: BF16 = False  # measured slower in bf16: see params.yaml
    # 1: small GEMMs, which a second thread barely speeds up and a busy second core slows down
    # (figures: docs/performance.md); `auto` times 1 against all cores
    threads: Threads = 1

    @model_validator(mode="after")
    def _size(self) -> MLPParams:
        weights = (self.hidden_layers - 1) * self.hidden_size**2
        if weights > MAX_WEIGHTS:
            raise ValueError(
                f"mlp.hidden_layers x mlp.hidden_size^2 must be at most {MAX_WEIGHTS} weights "
                f"(got {self.hidden_layers} x {self.hidden_size}^2: {weights / 2**30 * 4:.0f} GB "
                "in float32)"
            )
        return self


class CNNParams(ClassifierParams):
    section: ClassVar[str] = "cnn"

    # tutorial: 3 conv + pool blocks, fc 512 | resnet: stem + 3 residual stages (models.py)
    dataset: DatasetName = "cifar10"  # the net is built for the dataset's channels and size
    arch: Literal["tutorial", "resnet"] = "tutorial"
    width: int = Field(32, gt=0, le=1024)  # first stage's channels; the next two double them
    epochs: int = Field(10, gt=0, le=MAX_EPOCHS)
    batch_size: int = Field(128, gt=0, le=MAX_BATCH)
    scheduler: Schedule = "step"
    dropout: float = Field(0.5, ge=0, lt=1)  # before the last linear layer(s)
    augment: bool = True  # random crop (4-pixel zero padding) + horizontal flip
    flip_tta: bool = False  # evaluate on each image and its mirror, averaging the logits
    channels_last: bool = True
    bf16: BF16 = "auto"
    # None (all cores): more threads were faster on a quiet CPU, and no slower beside another busy
    # process, where appliedtorch lets idle threads sleep (figures: docs/performance.md)
    threads: Threads = None
