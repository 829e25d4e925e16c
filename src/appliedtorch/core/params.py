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
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliedtorch.core.errors import ParamsError

PositiveInt = Field(gt=0)


class Section(BaseModel):
    """Base for every section: unknown keys, silent type coercion and inf/nan are errors."""

    # allow_inf_nan=False: `lr: .inf` passed `gt=0` and only failed as a diverged run.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class SyntheticSizes(Section):
    """Sizes of the generated stand-ins for MNIST and CIFAR-10 (`data.source: synthetic`)."""

    seed: int = Field(0, ge=0)
    mnist_train: int = Field(60000, gt=0)
    mnist_test: int = Field(10000, gt=0)
    cifar10_train: int = Field(50000, gt=0)
    cifar10_test: int = Field(10000, gt=0)


class DataParams(Section):
    # upstream | synthetic | a directory | an http(s):// base URL laid out like upstream
    source: str = Field("upstream", min_length=1)
    timeout: float = Field(10.0, gt=0)  # seconds per request
    retries: int = Field(2, ge=0)  # extra attempts per URL, with exponential backoff
    synthetic: SyntheticSizes = SyntheticSizes()


class MLPParams(Section):
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(0.001, gt=0)
    hidden_size: int = Field(128, gt=0)
    train_limit: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(2048, gt=0)
    bf16: bool = False  # bfloat16 autocast (AMP); pays off on CUDA or a CPU with AVX-512 bf16
    compile: bool = False  # torch.compile the model (first epoch pays the compile time)
    # 1: small GEMMs; 2 threads gained ~10% on the quiet 2-core CPU but lost 3x with another process
    # busy (spinning), and waking sleeping threads (OMP_WAIT_POLICY=PASSIVE) cost more than they gave
    threads: int | None = Field(1, gt=0)  # CPU threads while training; None = torch's default


class CNNParams(Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(0.001, gt=0)
    step_size: int = Field(5, gt=0)
    gamma: float = Field(0.1, gt=0, le=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    augment: bool = True
    train_limit: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(1024, gt=0)
    channels_last: bool = True
    bf16: bool = False  # bfloat16 autocast (CPU with AVX-512 bf16, or CUDA)
    compile: bool = False  # torch.compile the model (first epoch pays the compile time)
    # None (all cores): with OMP_WAIT_POLICY=PASSIVE (appliedtorch sets it) 2 threads were 1.8x
    # faster than 1 on the quiet 2-core CPU and as fast with another process busy (benchmarks/run.py)
    threads: int | None = Field(None, gt=0)  # CPU threads while training; None = torch's default


class PINNParams(Section):
    """PINN recipe. These defaults are the tutorial's (soft BC, Adam only, float32, fixed grid);
    params.yaml holds the accurate recipe (hard BC, float64, Adam -> L-BFGS -> L-M)."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [10, 10], min_length=1)
    boundary: Literal["soft", "hard"] = "soft"
    bc_weight: float = Field(1.0, gt=0)  # weight of the boundary penalty (soft only)
    dtype: Literal["float32", "float64"] = "float32"
    collocation_points: int = Field(100, gt=1)
    resample_every: int = Field(
        0, ge=0
    )  # Adam draws fresh random points every N steps; 0: fixed grid
    adam_steps: int = Field(10000, ge=0)
    lr: float = Field(0.01, gt=0)
    lbfgs_steps: int = Field(0, ge=0)
    lbfgs_history: int = Field(50, gt=0)
    lbfgs_tolerance_grad: float = Field(0.0, ge=0)  # torch's 1e-7 stops L-BFGS too early here
    lbfgs_tolerance_change: float = Field(0.0, ge=0)  # torch's 1e-9 is absolute: same problem
    lbfgs_restarts: int = Field(5, ge=0)  # fresh L-BFGS starts allowed when one stops early
    lm_steps: int = Field(0, ge=0)  # Levenberg-Marquardt steps after L-BFGS
    num_threads: int = Field(1, ge=0)  # torch intra-op threads while solving; 0: leave as is
    eval_points: int = Field(1000, gt=1)

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_widths(cls, v: list[int]) -> list[int]:
        if any(w <= 0 for w in v):
            raise ValueError(f"must be positive layer widths (got {v})")
        return v


class MathParams(Section):
    # The tutorial starts at 0, a stationary point of x^4 - 3x^3 + 2, where descent never moves.
    gd_start: float = Field(3.0, allow_inf_nan=False)
    gd_lr: float = Field(0.01, gt=0)
    gd_steps: int = Field(1000, gt=0)  # upper bound; descent stops once |f'(x)| <= gd_tol
    gd_tol: float = Field(1e-10, gt=0)
    fft_sample_rate: float = Field(100.0, gt=20)  # Hz; above Nyquist for the 10 Hz component
    fft_duration: float = Field(1.0, gt=0)  # seconds; whole cycles of 5 and 10 Hz avoid leakage


class TrackingParams(Section):
    uri: str = Field("sqlite:///mlflow.db", min_length=1)
    # Register classifiers as mnist-mlp / cifar10-cnn; alias `champion` follows the best one.
    register_models: bool = False
    # Sample CPU, memory (and GPU) use into a training run's system/* metrics (needs psutil).
    system_metrics: bool = True


class Params(Section):
    seed: int = Field(42, ge=0)
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
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N (got '{v}')")
        return v


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


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
    key = ".".join(str(p) for p in err["loc"])
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
        bound = f"{bound:g}" if isinstance(bound, (int, float)) else bound
        return f"{name}: {key} must be {bounds[kind]} {bound} (got {got!r})"
    if kind == "finite_number":
        return f"{name}: {key} must be a finite number (got {got!r})"
    if kind == "literal_error":
        return f"{name}: {key} must be {ctx.get('expected')} (got {got!r})"
    if kind in ("too_short", "string_too_short"):
        return f"{name}: {key} must not be empty"
    base = kind.split("_")[0]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{name}: {key} must be {_TYPE_WORDS.get(base, base)} (got {got!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{name}: {key} {msg}"


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


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError with one line on any problem."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the repository root)") from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{name}: not valid YAML{where}: {problem}") from None
    return parse_params(raw, name)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a section (model or mapping) to dotted keys: {'cnn.lr': 0.001, ...}."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump()
    out: dict[str, Any] = {}
    for key, value in obj.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, full))
        else:
            out[full] = value
    return out


def run_params(params: Params, section: str) -> dict[str, Any]:
    """What a stage logs to MLflow: its section flattened with dots, plus seed and device."""
    return {
        **flatten(getattr(params, section), section),
        "seed": params.seed,
        "device": params.device,
    }


def main(argv: list[str] | None = None) -> None:
    """`python -m appliedtorch.core.params [params.yaml]`: validate a params file and print its sections."""
    import sys

    from appliedtorch.core.cli import run_stage

    path = (argv if argv is not None else sys.argv[1:]) or ["params.yaml"]

    def check() -> None:
        params = load_params(path[0])
        print(f"{path[0]}: ok ({', '.join(_SECTIONS)})")
        for key, value in flatten(params).items():
            print(f"  {key} = {value}")

    run_stage(check)


if __name__ == "__main__":
    main()
