"""What `dvc exp show --json` says, read as input: experiments pulled from a shared remote carry
metrics and params that someone else wrote.

    python -m appliedtorch.recipes compare recipes/cnn-fast.yaml --results

The output is bounded in bytes and in nesting before it is parsed (a 100,000-deep list would
otherwise end in a RecursionError), integers in digits, and every field the comparison uses is
checked against a schema (finite fractions, a bounded number of seeds). An experiment that fails names
itself and the field it cannot use, in one line; the other experiments still compare.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Annotated, Any

import numpy as np
from pydantic import Field, TypeAdapter, ValidationError

from appliedtorch.core.errors import AppliedTorchError

MAX_SHOWN_BYTES = 64 << 20  # thousands of experiments with their params, metrics, deps and outs
MAX_DEPTH = 64  # dvc's own nesting is ~15: list, rev, experiments, revs, data, params, file, ...
MAX_INT_DIGITS = 30  # no count, seed or size the comparison reads has more
MAX_NAME = 255  # a git ref component longer than this cannot be a file on most filesystems

Fraction = TypeAdapter(Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)])
# A 95 % CI of a few seeds' mean accuracy reaches past [0, 1] (Student's t is wide at n = 2):
# its bounds are finite numbers; a standard deviation is one that is not negative.
Finite = TypeAdapter(Annotated[float, Field(strict=True, allow_inf_nan=False)])
Spread = TypeAdapter(Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)])


class Unusable(AppliedTorchError):
    """One experiment's field cannot be used: the message names the field and why."""


class _TooManyDigits:
    """An integer of more than MAX_INT_DIGITS digits, as the parser keeps it (not computed)."""

    def __init__(self, digits: str):
        self.text = f"{digits[:12]}... ({len(digits)} digits)"

    def __repr__(self) -> str:
        return self.text


def _int(digits: str) -> int | _TooManyDigits:
    return int(digits) if len(digits) <= MAX_INT_DIGITS else _TooManyDigits(digits)


def json_depth(text: str) -> int:
    """How deeply a JSON text's arrays and objects nest (strings skipped), without parsing it."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    codes = np.frombuffer(bare.encode("latin-1", "replace"), dtype=np.uint8)
    steps = np.isin(codes, (91, 123)).astype(np.int64) - np.isin(codes, (93, 125))  # [{ and ]}
    return int(steps.cumsum().max()) if len(steps) else 0


def read_bounded(cmd: list[str]) -> tuple[int, str, str]:
    """Run `cmd`; (exit code, stdout, stderr's last line), reading at most MAX_SHOWN_BYTES."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        out = proc.stdout.read(MAX_SHOWN_BYTES + 1) if proc.stdout else b""
        if len(out) > MAX_SHOWN_BYTES:
            proc.kill()
            raise AppliedTorchError(
                f"{' '.join(cmd)} printed more than {MAX_SHOWN_BYTES >> 20} MB: refused "
                "(remove old experiments with `dvc exp remove`)"
            )
        err = proc.stderr.read(1 << 20) if proc.stderr else b""
        code = proc.wait()
    lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
    return code, out.decode(errors="replace"), lines[-1][:200] if lines else ""


def parse_shown(text: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """{experiment name: its data} from `dvc exp show --json`'s text, and one line per
    experiment (or commit) left out because its entry is not what DVC writes."""
    where = "dvc exp show --json"
    depth = json_depth(text)
    if depth > MAX_DEPTH:
        raise AppliedTorchError(f"{where}: nested {depth} deep, more than {MAX_DEPTH}: refused")
    try:
        revs = json.loads(text or "[]", parse_int=_int)
    except ValueError as exc:
        raise AppliedTorchError(f"{where}: not JSON ({str(exc)[:100]})") from None
    if not isinstance(revs, list):
        raise AppliedTorchError(f"{where}: a {type(revs).__name__}, not a list of commits")
    out: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for i, rev in enumerate(revs):
        exps = rev.get("experiments") if isinstance(rev, dict) else None
        if exps is None:
            continue
        if not isinstance(exps, list):
            skipped.append(f"commit {i}: 'experiments' is a {type(exps).__name__}, not a list")
            continue
        for exp in exps:
            name, data, why = _entry(exp)
            if why:
                skipped.append(f"experiment {name}: {why}")
            elif name is not None:
                out[name] = data
    return out, skipped


def _entry(exp: Any) -> tuple[str | None, dict[str, Any], str | None]:
    """(name, data, why it is left out or None) of one entry of a commit's 'experiments'."""
    if not isinstance(exp, dict):
        return f"<{type(exp).__name__}>", {}, "not a mapping"
    name = exp.get("name")
    if name is None:
        return None, {}, None  # an unnamed one (a queued run): nothing to compare
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME or not name.isprintable():
        return repr(name)[:60], {}, f"its name is not 1 to {MAX_NAME} printable characters"
    revs = exp.get("revs")
    if not isinstance(revs, list) or not revs or not isinstance(revs[0], dict):
        return name, {}, "'revs' is not a list of revisions"
    data = revs[0].get("data") or {}
    if not isinstance(data, dict):
        return name, {}, f"'data' is a {type(data).__name__}, not a mapping"
    return name, data, None


def section_of(data: dict[str, Any], kind: str, file: str) -> dict[str, Any] | None:
    """`data[kind][file]['data']` (a metrics or params file's content), None when the file is
    not there; Unusable when it is there but not a mapping (or DVC could not read it)."""
    files = data.get(kind) or {}
    if not isinstance(files, dict):
        raise Unusable(f"'{kind}' is a {type(files).__name__}, not a mapping")
    if file not in files:
        return None
    entry = files[file]
    content = entry.get("data") if isinstance(entry, dict) else None
    if not isinstance(content, dict):
        raise Unusable(f"{file} is not a mapping (DVC could not read it, or it was rewritten)")
    return content


def count_schema(most: int) -> TypeAdapter:
    """The schema of a count of 1 to `most` (an integer: not a float, a string or a bool)."""
    return TypeAdapter(Annotated[int, Field(strict=True, ge=1, le=most)])


def checked(adapter: TypeAdapter, value: Any, field: str) -> Any:
    """`value` as the schema wants it; Unusable naming `field`, the value and the rule."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        rule = exc.errors()[0]["msg"]
        raise Unusable(f"{field} is {repr(value)[:40]}: {rule[:80].lower()}") from None
