"""Params machinery: the base of every section, the params.yaml reader and one-line errors.

Each stage's section lives with the code that uses it (`appliedtorch.classify.params`, ...);
`appliedtorch.params` assembles them into the whole file's schema:

    >>> from appliedtorch.params import load_params
    >>> load_params("params.yaml").mlp.lr
    0.001

Any problem (unreadable YAML, unknown key, wrong type, out-of-range value, missing section) raises
`ParamsError` with one line that names the key, e.g. `params.yaml: mlp.lr must be > 0 (got -1)`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliedtorch.core.errors import ParamsError
from appliedtorch.core.utils import flatten, read_regular

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
MAX_SAMPLES = 2**31 - 1  # train_limit: more than any dataset here holds
MAX_POINTS = 10**7  # collocation / evaluation points and FFT samples: ~80 MB of float64 each
MAX_THREADS = 1024
MAX_TIMEOUT = 3600.0
MAX_PARAMS_BYTES = 64 << 10  # params.yaml is ~4 KB; pure-Python YAML parses 64 KB in < 1 s


class Section(BaseModel):
    """Base for every section: unknown keys, silent type coercion and inf/nan are errors."""

    # allow_inf_nan=False: `lr: .inf` passed `gt=0` and only failed as a diverged run.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    # field name -> what an upper-bound error adds to its line (why the bound is where it is)
    bound_notes: ClassVar[dict[str, str]] = {}


class TrackingParams(Section):
    """Where runs go and what they record (shared by every stage that logs to MLflow)."""

    uri: str = Field("sqlite:///mlflow.db", min_length=1, max_length=4096)
    # The `register` stage registers the trained classifiers as mnist-mlp / cifar10-cnn; alias
    # `champion` follows the best one. A local sqlite store costs nothing, so it is on by default.
    register_models: bool = True
    # Sample CPU, memory (and GPU) use into a training run's system/* metrics (needs psutil).
    system_metrics: bool = True


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


def _describe(err: dict[str, Any], name: str, schema: type[BaseModel]) -> str:
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
        note = _bound_note(schema, err["loc"]) if kind.startswith("less") else ""
        return f"{name}: {key} must be {bounds[kind]} {bound} (got {short(got)}){note}"
    if kind == "finite_number":
        return f"{name}: {key} must be a finite number (got {short(got)})"
    if kind == "literal_error":
        return f"{name}: {key} must be {ctx.get('expected')} (got {short(got)})"
    if kind in ("too_long", "string_too_long"):
        return f"{name}: {key} must have at most {ctx.get('max_length')} items or characters"
    if kind in ("too_short", "string_too_short"):
        return f"{name}: {key} must not be empty"
    base = kind.split("_")[0]
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{name}: {key} must be {_TYPE_WORDS.get(base, base)} (got {short(got)})"
    msg = err["msg"].removeprefix("Value error, ")
    if msg.startswith(f"{key}."):  # a check across keys names them itself
        return f"{name}: {msg}"
    return f"{name}: {key} {msg}"


def _bound_note(schema: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """The note the section that holds the key `loc` gives for its upper bound, if any."""
    model: Any = schema
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
    return getattr(model, "bound_notes", {}).get(loc[-1], "")


def short(value: Any, limit: int = 40) -> str:
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


def required_sections(schema: type[BaseModel]) -> tuple[str, ...]:
    """The sections a params file for `schema` must hold."""
    return tuple(f for f, info in schema.model_fields.items() if info.is_required())


def validate(schema: type[BaseModel], raw: Any, name: str = "params.yaml") -> Any:
    """Validate an already-parsed mapping against `schema`; one-line ParamsError on a problem."""
    if raw is None:
        sections = ", ".join(required_sections(schema))
        raise ParamsError(f"{name}: file is empty; it needs the sections {sections}")
    if not isinstance(raw, dict):
        raise ParamsError(
            f"{name}: top level must be a mapping of sections (got {type(raw).__name__})"
        )
    try:
        return schema.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        path = _field_path(schema, errors[0]["loc"])
        union = errors[0]["type"] != "extra_forbidden" and path != tuple(errors[0]["loc"])
        if union:  # a value matching none of a union's choices
            alike = [e for e in errors if tuple(e["loc"][: len(path)]) == path]
            line = _describe_choices(alike, path, name)
        else:
            alike = errors[:1]
            line = _describe(errors[0], name, schema)
        if len(errors) > len(alike):
            line += f" (and {len(errors) - len(alike)} more problem(s))"
        raise ParamsError(line) from None


def _field_path(schema: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of an error's location that names fields (and list items): pydantic appends
    the tag of each union member that refused the value (`literal['auto']`, `bool`)."""
    model: Any = schema
    path: list[Any] = []
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if isinstance(part, int) or fields is None:
            if not isinstance(part, int):
                break
            path.append(part)
            continue
        if part not in fields:
            break
        path.append(part)
        model = fields[part].annotation
    return tuple(path)


def _describe_choices(errors: list[dict[str, Any]], path: tuple[Any, ...], name: str) -> str:
    """One line for a value that matched none of a union's members: every choice it had."""
    choices = []
    for err in errors:
        expected = err.get("ctx", {}).get("expected")
        words = expected or _TYPE_WORDS.get(err["type"].split("_")[0], err["type"])
        choices.append(words.replace("none", "null"))
    key = _clip(".".join(str(p) for p in path), 80)
    return f"{name}: {key} must be {' or '.join(dict.fromkeys(choices))} (got {short(errors[0].get('input'))})"


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
        data = read_regular(path, MAX_PARAMS_BYTES)
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
    return parse_yaml(text, name)


def parse_yaml(text: str, name: str) -> Any:
    """YAML text as plain data, refused as read_yaml refuses it (anchors, aliases, duplicate
    keys, YAML errors: one ParamsError line that starts with `name`)."""
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


def load(schema: type[BaseModel], path: str | os.PathLike = "params.yaml") -> Any:
    """Read and validate a params file against `schema`; ParamsError with one line on a problem."""
    params = validate(schema, read_yaml(path), Path(path).name)
    global _loaded_from
    _loaded_from = Path(path).resolve().parent
    return params


def loaded_from() -> Path | None:
    """The directory of the params file this process loaded last (the tracking database's
    relative path is anchored at the repository holding it); None before any."""
    return _loaded_from


def run_params(params: Any, section: str) -> dict[str, Any]:
    """What a stage logs to MLflow: its section flattened with dots, plus seed and device."""
    return {
        **flatten(getattr(params, section).model_dump(), section),
        "seed": params.seed,
        "device": params.device,
    }
