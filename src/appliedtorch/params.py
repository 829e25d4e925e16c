"""The whole params.yaml: each stage's section, assembled from the subpackage that uses it.

python -m appliedtorch.params params.yaml     # check a params file without running anything

>>> load_params("params.yaml").cnn.epochs
10
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, ClassVar

from pydantic import Field, field_validator

from appliedtorch.classify.params import CNNParams, MLPParams
from appliedtorch.core import params as machinery
from appliedtorch.core.params import MAX_DEVICE_INDEX, MAX_SEED, Section, TrackingParams, short
from appliedtorch.core.utils import flatten
from appliedtorch.data.params import DataParams
from appliedtorch.demos.params import MathParams
from appliedtorch.pinn.params import PINNFamilyParams, PINNInverseParams, PINNParams


class Params(Section):
    """params.yaml: the shared keys (seed, device) and one section per stage."""

    seed: int = Field(42, ge=0, le=MAX_SEED)
    device: str = "auto"
    data: DataParams
    mlp: MLPParams
    cnn: CNNParams
    pinn: PINNParams
    pinn_inverse: PINNInverseParams = Field(default_factory=PINNInverseParams)
    pinn_family: PINNFamilyParams = Field(default_factory=PINNFamilyParams)
    math: MathParams
    tracking: TrackingParams

    bound_notes: ClassVar[dict[str, str]] = {"seed": " (numpy takes seeds below 2^32)"}

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        # Only strings torch.device() parses to the same device (tests/test_params.py checks).
        m = re.fullmatch(r"auto|cpu|mps|cuda(?::(0|[1-9][0-9]{0,2}))?", v)
        if not m:
            raise ValueError(f"must be auto, cpu, cuda or cuda:N (got {short(v)})")
        if m[1] and int(m[1]) > MAX_DEVICE_INDEX:
            raise ValueError(f"must be cuda:0 to cuda:{MAX_DEVICE_INDEX} (got {short(v)})")
        return v


REQUIRED_SECTIONS = machinery.required_sections(Params)  # what every params.yaml must hold


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError with one line on any problem."""
    return machinery.load(Params, path)


def parse_params(raw: Any, name: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping (a params file read elsewhere, a recipe applied)."""
    return machinery.validate(Params, raw, name)


def main(argv: list[str] | None = None) -> None:
    """Validate a params file (default params.yaml) and print its sections, or one error line."""
    from appliedtorch.core.cli import run_stage  # the stage wrapper: only the command needs it
    from appliedtorch.core.redact import redact

    path = (argv if argv is not None else sys.argv[1:]) or ["params.yaml"]

    def check() -> None:
        params = load_params(path[0])
        print(f"{path[0]}: ok ({', '.join(REQUIRED_SECTIONS)})")
        for key, value in flatten(params.model_dump()).items():
            print(f"  {key} = {redact(str(value))}")  # tracking.uri may hold a password

    run_stage(check)


if __name__ == "__main__":
    main()
