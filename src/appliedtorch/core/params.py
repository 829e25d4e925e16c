"""Typed, validated params: one pydantic model per params.yaml section.

The only module that reads params.yaml. Example:

    >>> p = load_params("params.yaml")
    >>> p.mlp.lr
    0.001

Any problem (unreadable YAML, unknown key, wrong type, out-of-range value, missing section) raises
`ParamsError` with one line that names the key, e.g. `params.yaml: mlp.lr must be > 0 (got -1)`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from appliedtorch.core.errors import ParamsError
from appliedtorch.core.utils import flatten

# Upper bounds: every number must be one torch, numpy and the machine can take. A seed goes to
# numpy (< 2^32) and into torch generators as seed * 1_000_003 + rank (< 2^64); a device index is
# an int8 in torch, which silently wraps `cuda:128` to `cuda:-128` and `cuda:256` to `cuda:0`.
MAX_SEED = 2**32 - 1
MAX_DEVICE_INDEX = 127
MAX_EPOCHS = 100_000
MAX_STEPS = 10**8
MAX_BATCH = 2**24
MAX_WIDTH = 2**16  # hidden units: a 784 x 65536 layer is already 200 MB
MAX_LAYERS = 256
MAX_WEIGHTS = 2**28  # hidden-to-hidden weights of the MLP: 1 GB in float32
MAX_SAMPLES = 2**31 - 1  # train_limit: more than any dataset here holds
MAX_POINTS = 10**7  # collocation / evaluation points and FFT samples: ~80 MB of float64 each
MAX_THREADS = 1024
MAX_RETRIES = 5  # back-off doubles from 0.5 s (each wait at most 8 s): 5 retries wait 15.5 s
MAX_TIMEOUT = 3600.0
MAX_PARAMS_BYTES = 64 << 10  # params.yaml is ~4 KB; pure-Python YAML parses 64 KB in < 1 s


class Section(BaseModel):
    """Base for every section: unknown keys, silent type coercion and inf/nan are errors."""

    # allow_inf_nan=False: `lr: .inf` passed `gt=0` and only failed as a diverged run.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class SyntheticSizes(Section):
    """Sizes of the generated stand-ins for MNIST and CIFAR-10 (`data.source: synthetic`)."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    # At most twice upstream's sizes: what a mirror's files may hold (appliedtorch.data.fetch).
    mnist_train: int = Field(60000, gt=0, le=120_000)
    mnist_test: int = Field(10000, gt=0, le=20_000)
    cifar10_train: int = Field(50000, gt=0, le=100_000)
    cifar10_test: int = Field(10000, gt=0, le=20_000)


class DataParams(Section):
    # upstream | synthetic | a directory | an http(s):// base URL laid out like upstream
    source: str = Field("upstream", min_length=1, max_length=4096)
    timeout: float = Field(10.0, gt=0, le=MAX_TIMEOUT)  # seconds any one network wait may take
    file_timeout: float = Field(900.0, gt=0, le=24 * MAX_TIMEOUT)  # seconds for a whole file
    retries: int = Field(2, ge=0, le=MAX_RETRIES)  # extra attempts per URL, backing off 2x
    synthetic: SyntheticSizes = SyntheticSizes()


# Choices both classifier sections offer (`auto`: where the device computes bf16 natively).
Schedule = Literal["constant", "step", "cosine", "onecycle"]
BF16 = Literal["auto"] | bool


class ClassifierParams(Section):
    """What the MLP and CNN sections share: the training recipe. The defaults are the tutorial's
    (Adam, no weight decay, no label smoothing, no batch norm); the tutorial's "extend it" list
    (deeper nets, other optimizers, schedulers, batch norm, ...) is these keys."""

    section: ClassVar[str] = ""  # the params.yaml section, for messages across keys

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
    # bfloat16 autocast: auto = where the device computes bf16 natively (core/hardware.py)
    bf16: BF16 = False
    compile: bool = False  # torch.compile the model (first epoch pays the compile time)
    threads: int | None = Field(None, gt=0, le=MAX_THREADS)  # CPU threads; None: torch's default

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

    # tutorial: 784 -> hidden -> hidden -> 10 | residual: x + layer(x) around hidden layers 2..
    arch: Literal["tutorial", "residual"] = "tutorial"
    hidden_layers: int = Field(2, gt=0, le=MAX_LAYERS)
    hidden_size: int = Field(128, gt=0, le=MAX_WIDTH)
    step_size: int = Field(2, gt=0, le=MAX_EPOCHS)
    eval_batch_size: int = Field(2048, gt=0, le=MAX_BATCH)
    bf16: BF16 = False  # measured slower in bf16: see params.yaml
    # 1: small GEMMs; 2 threads gained ~10% on the quiet 2-core CPU but lost 3x with another process
    # busy (spinning), and waking sleeping threads (OMP_WAIT_POLICY=PASSIVE) cost more than they gave
    threads: int | None = Field(1, gt=0, le=MAX_THREADS)  # CPU threads; None = torch's default

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
    # None (all cores): with OMP_WAIT_POLICY=PASSIVE (appliedtorch sets it) 2 threads were 1.8x
    # faster than 1 on the quiet 2-core CPU and as fast with another process busy (benchmarks/run.py)
    threads: int | None = Field(None, gt=0, le=MAX_THREADS)  # CPU threads; None: torch's default


class PINNParams(Section):
    """PINN recipe. These defaults are the tutorial's (soft BC, Adam only, float32, fixed grid);
    params.yaml holds the accurate recipe (hard BC, float64, Adam -> L-BFGS -> L-M)."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [10, 10], min_length=1, max_length=64)
    boundary: Literal["soft", "hard"] = "soft"
    bc_weight: float = Field(1.0, gt=0)  # weight of the boundary penalty (soft only)
    dtype: Literal["float32", "float64"] = "float32"
    collocation_points: int = Field(100, gt=1, le=MAX_POINTS)
    # Adam draws fresh random points every N steps; 0: fixed grid
    resample_every: int = Field(0, ge=0, le=MAX_STEPS)
    adam_steps: int = Field(10000, ge=0, le=MAX_STEPS)
    lr: float = Field(0.01, gt=0)
    lbfgs_steps: int = Field(0, ge=0, le=MAX_STEPS)
    lbfgs_history: int = Field(50, gt=0, le=10_000)
    lbfgs_tolerance_grad: float = Field(0.0, ge=0)  # torch's 1e-7 stops L-BFGS too early here
    lbfgs_tolerance_change: float = Field(0.0, ge=0)  # torch's 1e-9 is absolute: same problem
    lbfgs_restarts: int = Field(5, ge=0, le=1000)  # fresh L-BFGS starts when one stops early
    lm_steps: int = Field(0, ge=0, le=MAX_STEPS)  # Levenberg-Marquardt steps after L-BFGS
    num_threads: int = Field(1, ge=0, le=MAX_THREADS)  # intra-op threads; 0: leave as is
    eval_points: int = Field(1000, gt=1, le=MAX_POINTS)

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w <= 0 or w > MAX_WIDTH for w in v):
            raise ValueError(f"must be layer widths from 1 to {MAX_WIDTH} (got {_short(v)})")
        return v


class MathParams(Section):
    # The tutorial starts at 0, a stationary point of x^4 - 3x^3 + 2, where descent never moves.
    gd_start: float = Field(3.0, allow_inf_nan=False)
    gd_lr: float = Field(0.01, gt=0)
    gd_steps: int = Field(1000, gt=0, le=MAX_STEPS)  # at most; stops once |f'(x)| <= gd_tol
    gd_tol: float = Field(1e-10, gt=0)
    fft_sample_rate: float = Field(100.0, gt=20, le=MAX_POINTS)  # Hz; above 10 Hz's Nyquist
    fft_duration: float = Field(1.0, gt=0)  # seconds; whole cycles of 5 and 10 Hz avoid leakage

    @model_validator(mode="after")
    def _fft_samples(self) -> MathParams:
        # fft_demo takes round(rate * duration) samples; fewer than 2 has no spectrum to check.
        n = round(self.fft_sample_rate * self.fft_duration)
        if not 2 <= n <= MAX_POINTS:
            raise ValueError(
                f"math.fft_sample_rate x math.fft_duration must give 2 to {MAX_POINTS} samples "
                f"(got {self.fft_sample_rate:g} Hz x {self.fft_duration:g} s = {n})"
            )
        return self


class TrackingParams(Section):
    uri: str = Field("sqlite:///mlflow.db", min_length=1, max_length=4096)
    # Register classifiers as mnist-mlp / cifar10-cnn; alias `champion` follows the best one.
    register_models: bool = False
    # Sample CPU, memory (and GPU) use into a training run's system/* metrics (needs psutil).
    system_metrics: bool = True


class Params(Section):
    seed: int = Field(42, ge=0, le=MAX_SEED)
    device: str = "auto"
    data: DataParams
    mlp: MLPParams
    cnn: CNNParams
    pinn: PINNParams
    math: MathParams
    tracking: TrackingParams

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        # Only strings torch.device() parses to the same device (tests/test_params.py checks).
        m = re.fullmatch(r"auto|cpu|mps|cuda(?::(0|[1-9][0-9]{0,2}))?", v)
        if not m:
            raise ValueError(f"must be auto, cpu, cuda or cuda:N (got {_short(v)})")
        if m[1] and int(m[1]) > MAX_DEVICE_INDEX:
            raise ValueError(f"must be cuda:0 to cuda:{MAX_DEVICE_INDEX} (got {_short(v)})")
        return v


class _Refused(Exception):
    """A YAML construct params.yaml does not allow: an anchor, an alias or a duplicate key."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`) and refuses anchors
    and aliases: `&a [*b, *b, ...]` nested ten deep is a 1.5 KB file whose values (and error
    messages) expand to gigabytes, and nothing in params.yaml needs them (nor does DVC's -S)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise _Refused(
                f"YAML {'alias' if sign == '*' else 'anchor'} {sign}{_clip(str(event.anchor), 20)}"
                f" at line {event.start_mark.line + 1}: anchors and aliases are not allowed in "
                "params.yaml; write the values out"
            )
        return super().compose_node(parent, index)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "model": "a mapping",
    "dict": "a mapping",
}


def _describe(err: dict[str, Any], name: str) -> str:
    """One readable line for one pydantic error."""
    key = _clip(".".join(str(p) for p in err["loc"]), 80)
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        return f"{name}: unknown key '{key}'"
    if kind == "missing":
        what = "section" if len(err["loc"]) == 1 else "key"
        return f"{name}: {what} '{key}' is missing"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        bound = next(iter(ctx.values()))
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        note = _BOUND_NOTES.get(key, "") if kind.startswith("less") else ""
        return f"{name}: {key} must be {bounds[kind]} {bound} (got {_short(got)}){note}"
    if kind == "finite_number":
        return f"{name}: {key} must be a finite number (got {_short(got)})"
    if kind == "literal_error":
        return f"{name}: {key} must be {ctx.get('expected')} (got {_short(got)})"
    if kind in ("too_long", "string_too_long"):
        return f"{name}: {key} must have at most {ctx.get('max_length')} items or characters"
    if kind in ("too_short", "string_too_short"):
        return f"{name}: {key} must not be empty"
    base = kind.split("_")[0]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{name}: {key} must be {_TYPE_WORDS.get(base, base)} (got {_short(got)})"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith(f"{key}."):  # a check across keys names them itself
        return f"{name}: {msg}"
    return f"{name}: {key} {msg}"


_BOUND_NOTES = {
    "data.retries": (
        ": each retry waits twice as long as the one before (0.5 s, 1 s, 2 s, ..., at most 8 s), "
        f"so {MAX_RETRIES} retries already wait 15.5 s per file"
    ),
    "seed": " (numpy takes seeds below 2^32)",
}


def _short(value: Any, limit: int = 40) -> str:
    """repr of a bad value, cut to `limit` characters: error lines quote values, not files."""
    if isinstance(value, (dict, list, tuple, set)) and len(value) > 20:
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        return _clip(repr(value), limit)
    except Exception:  # noqa: BLE001 - a value whose repr fails is described by its type
        return f"<{type(value).__name__}>"


def _clip(text: str, limit: int = 40) -> str:
    """`text` as printable characters, at most `limit` of them."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_params(raw: Any, name: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping."""
    if raw is None:
        raise ParamsError(f"{name}: file is empty; it needs the sections {', '.join(_SECTIONS)}")
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{name}: top level must be a mapping of sections (got {type(raw).__name__})"
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        line = _describe(errors[0], name)
        if len(errors) > 1:
            line += f" (and {len(errors) - 1} more problem(s))"
        raise ParamsError(line) from None


_SECTIONS = [f for f, info in Params.model_fields.items() if info.is_required()]
REQUIRED_SECTIONS = tuple(_SECTIONS)  # what every params.yaml must hold


def _check_duplicates(node: yaml.Node, path: tuple[str, ...] = ()) -> None:
    """Refuse a key given twice in one mapping (PyYAML keeps the last; DVC refuses the file)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                what = "section" if not path else "key"
                full = ".".join((*path, _clip(key)))
                raise _Refused(
                    f"{what} '{full}' appears twice (lines {seen[key]} and {line}); keep one"
                )
            if key is not None:
                seen[key] = line
            _check_duplicates(value_node, (*path, key or "?"))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, (*path, str(i)))


def read_yaml(path: str | os.PathLike) -> Any:
    """params.yaml as plain data: UTF-8, at most 64 KB, no anchors, aliases or duplicate keys."""
    path = Path(path)
    name = path.name
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PARAMS_BYTES + 1)
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ParamsError(f"{name}: larger than {MAX_PARAMS_BYTES >> 10} KB; not a params file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError(
            f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
            "save it as UTF-8"
        ) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node)
        return loader.construct_document(node)
    except _Refused as exc:
        raise ParamsError(f"{name}: {exc}") from None
    except (ValueError, RecursionError, OverflowError) as exc:
        # e.g. an integer of more than 4300 digits, or lists nested thousands deep
        raise ParamsError(f"{name}: not valid YAML: {_clip(str(exc), 80)}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{name}: not valid YAML{where}: {_clip(str(problem), 80)}") from None
    finally:
        loader.dispose()


_loaded_from: Path | None = None


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError with one line on any problem."""
    params = parse_params(read_yaml(path), Path(path).name)
    global _loaded_from
    _loaded_from = Path(path).resolve().parent
    return params


def loaded_from() -> Path | None:
    """The directory of the params file this process loaded last (the tracking database's
    relative path is anchored at the repository holding it); None before any."""
    return _loaded_from


def run_params(params: Params, section: str) -> dict[str, Any]:
    """What a stage logs to MLflow: its section flattened with dots, plus seed and device."""
    return {
        **flatten(getattr(params, section).model_dump(), section),
        "seed": params.seed,
        "device": params.device,
    }
