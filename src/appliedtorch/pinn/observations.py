"""Observations for the inverse problem: u(x_i; k_true) + Gaussian noise, as a CSV of x,u.

    python stages/pinn_observations.py --params params.yaml --out data/pinn/observations.csv

`make` draws them from the closed form (params `pinn_inverse`: k_true, points, noise_sd,
noise_seed); `read_csv` reads them back, or a user's own file, as untrusted input: a regular
file of at most MAX_BYTES, the header `x,u`, two finite numbers a row, x inside [0, π/2], at
least MIN_OBSERVATIONS and at most MAX_OBSERVATIONS rows. Any problem is one line naming the file
and the row.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from appliedtorch.core.errors import DataError
from appliedtorch.core.utils import read_regular, write_text
from appliedtorch.pinn.params import MAX_OBSERVATIONS, MIN_OBSERVATIONS
from appliedtorch.pinn.problem import A, B, closed_form

HEADER = "x,u"
MAX_BYTES = 64 * MAX_OBSERVATIONS  # two 17-digit numbers a row, with room for spaces
MAX_FIELD = 40  # characters in one number: 17 digits, sign, point, exponent and some spaces


def make(k_true: float, points: int, noise_sd: float, noise_seed: int) -> tuple[np.ndarray, ...]:
    """(x, u): `points` evenly spaced interior points and u(x; k_true) + N(0, noise_sd²)."""
    x = np.linspace(A, B, points + 2)[1:-1]
    noise = np.random.default_rng(noise_seed).standard_normal(points)
    return x, closed_form(x, k_true) + noise_sd * noise


def write_csv(path: str | os.PathLike, x: np.ndarray, u: np.ndarray) -> None:
    """x,u rows with every digit a float64 holds (repr), written atomically."""
    rows = "".join(f"{float(a)!r},{float(b)!r}\n" for a, b in zip(x, u, strict=True))
    write_text(path, f"{HEADER}\n{rows}")


def read_csv(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(x, u) from a CSV of x,u, validated (see the module docstring); DataError on a problem."""
    path = Path(path)
    try:
        data = read_regular(path, MAX_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: no such observations file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_BYTES:
        raise DataError(f"{path}: larger than {MAX_BYTES >> 20} MB; not an observations file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    lines = [line.strip() for line in text.splitlines()]
    if not lines or lines[0].replace(" ", "").lower() != HEADER:
        raise DataError(f"{path}: line 1 must be the header `{HEADER}`")
    rows = [(n, line) for n, line in enumerate(lines[1:], start=2) if line]
    if not MIN_OBSERVATIONS <= len(rows) <= MAX_OBSERVATIONS:
        raise DataError(
            f"{path}: {len(rows)} observation(s); need {MIN_OBSERVATIONS} to {MAX_OBSERVATIONS}"
            " (k and its standard error need at least two)"
        )
    x, u = np.empty(len(rows)), np.empty(len(rows))
    for i, (n, line) in enumerate(rows):
        x[i], u[i] = _row(path, n, line)
    if np.ptp(x) == 0:
        raise DataError(f"{path}: every observation is at the same x; k cannot be told apart")
    return x, u


def _row(path: Path, n: int, line: str) -> tuple[float, float]:
    """One data line as (x, u), checked."""
    fields = line.split(",")
    if len(fields) != 2:
        raise DataError(f"{path}: line {n} must hold two numbers x,u (got {len(fields)} fields)")
    values = []
    for name, text in zip(("x", "u"), fields, strict=True):
        text = text.strip()
        try:
            if len(text) > MAX_FIELD or "_" in text:
                raise ValueError
            value = float(text)
        except ValueError:
            raise DataError(f"{path}: line {n}: {name} is not a number ({text[:20]!r})") from None
        if not math.isfinite(value):
            raise DataError(f"{path}: line {n}: {name} must be finite (got {text[:20]})")
        values.append(value)
    if not A <= values[0] <= B:
        raise DataError(f"{path}: line {n}: x = {values[0]:g} is outside [0, π/2]")
    if abs(values[1]) > 1e6:
        raise DataError(f"{path}: line {n}: |u| = {abs(values[1]):g} is beyond 1e6")
    return values[0], values[1]
