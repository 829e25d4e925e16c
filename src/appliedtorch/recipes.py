"""`python -m appliedtorch.recipes`: check a training recipe, or queue the sweep that compares it.

    python -m appliedtorch.recipes check recipes/cnn-fast.yaml     # valid on top of params.yaml?
    python -m appliedtorch.recipes compare recipes/cnn-fast.yaml   # queue baseline, recipe and
    dvc queue start -j 1                                          #   each change alone; run them
    dvc exp show --only-changed --sort-by reports/cnn/metrics.json:test_accuracy
    python -m appliedtorch.recipes compare recipes/cnn-fast.yaml --seeds 3   # 3 members each
    python -m appliedtorch.recipes compare recipes/cnn-fast.yaml --results   # mean ± CI, p

A recipe (`recipes/*.yaml`) is a flat map of dotted params.yaml keys to values, one `key: value`
per line, so that `dvc exp run` applies it with one `-S key=value` per line (README shows the
one-liner). `compare` queues one DVC experiment per variant, named `<name>.<variant>`: `baseline`
(params.yaml as it is: the tutorial's unless changed), `recipe` (every key) and one per change the
recipe makes, alone (keys that only make sense together, such as an optimizer and its learning
rate, change together). Their MLflow runs carry the tags `sweep=<name>` and `variant=<variant>`.

`--seeds N` sets `<section>.seeds=N` on every variant: each trains N members (classify/runs/ensemble.py)
and its metrics.json holds their mean, sample sd and 95 % CI. `--results`, once the queue has
run, prints each variant's test accuracy as mean ± CI half-width with Welch's t-test p-value
against the baseline (unequal variances: `scipy.stats.ttest_ind_from_stats`, the same test as
`ttest_ind(equal_var=False)` on the members' values), read from `dvc exp show --json`.

The module sits outside every stage's DVC deps, like `appliedtorch.params`.
"""

from __future__ import annotations

import argparse
import copy
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from appliedtorch import plan
from appliedtorch.classify.params import MAX_SEEDS
from appliedtorch.comparison import (  # noqa: F401  (the sweep imports these from here)
    estimate,
    result_text,
    results_lines,
    shown_experiments,
    welch_p,
)
from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError, ParamsError
from appliedtorch.core.params import parse_yaml, read_yaml, short
from appliedtorch.core.utils import flatten
from appliedtorch.params import parse_params

log = logging.getLogger(__name__)

# What `dvc exp run` takes from one line of the README's sed one-liner: a (dotted) key, a colon,
# one value with no spaces (no inline comment).
_LINE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*: *[^ #]+")
_KEY = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
MAX_SET_CHARS = 1000  # a -S value is one number, name or short list
MAX_EXP_NAME = 200  # bytes: with `.<variant>` still under a file name's 255
# Keys that change together in `compare`: the single change is named by the first key. An
# optimizer's learning rate, momentum and weight decay and its schedule are one choice; a net's
# width is the width of that net.
COUPLED = (
    ("arch", "width", "hidden_layers", "hidden_size"),
    (
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "scheduler",
        "warmup_epochs",
        "step_size",
        "gamma",
    ),
)
# section -> its training stage (its data comes from download@<section's dataset>)
STAGES = {"mlp": "train_mlp", "cnn": "train_cnn"}


def read_recipe(path: str | Path, params: str | Path = "params.yaml") -> dict[str, Any]:
    """The recipe's {dotted key: value}, checked line by line and, applied to `params`, by the
    params models. Raises ParamsError with one line naming the problem."""
    path = Path(path)
    raw = read_yaml(path)  # size, encoding, anchors and duplicates, as for params.yaml
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{path}: a recipe is a mapping of dotted params keys to values")
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#") and not _LINE.fullmatch(line):
            raise ParamsError(
                f"{path}: line {number} is not `section.key: value` (one value, no spaces, no "
                "inline comment): `dvc exp run -S` could not take it"
            )
    base = read_yaml(params)
    known = flatten(parse_params(base, Path(params).name).model_dump())
    for key, value in raw.items():
        if key not in known:
            raise ParamsError(f"{path}: unknown key '{key}' (not in {Path(params).name})")
        if key != "seed" and key.split(".")[0] not in STAGES:
            # A recipe comes from someone else: where runs are logged (tracking.uri), where data
            # comes from and the device are the workspace's, not a recipe's to change.
            raise ParamsError(
                f"{path}: {key} is not a training setting: a recipe changes seed, "
                f"{', '.join(f'{s}.*' for s in STAGES)} only"
            )
        if isinstance(value, (dict, list)):
            raise ParamsError(f"{path}: {key} must be a single value, not a {type(value).__name__}")
    parse_params(apply(base, raw), f"{Path(params).name} with {path.name}")
    return raw


def apply(params: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of the params mapping with the dotted `changes` set; ParamsError when a key's
    path runs through a value (`cnn.lr.x` where cnn.lr is a number)."""
    out = copy.deepcopy(params)
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = out
        for i, section in enumerate(sections):
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                path = ".".join(sections[: i + 1])
                raise ParamsError(f"{key}: {path} is a value, not a section; set {path} itself")
        node[name] = value
    return out


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`-S key=value` items as {key: value}, each value read as params.yaml is (no anchors or
    aliases, at most MAX_SET_CHARS characters); one ParamsError line for a bad one."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise ParamsError(f"-S {short(item)}: not key=value with a dotted params key")
        if len(text) > MAX_SET_CHARS:
            raise ParamsError(f"-S {key}: value longer than {MAX_SET_CHARS} characters")
        out[key] = parse_yaml(text, f"-S {key}")
    return out


def check_exp_name(name: str) -> None:
    """Refuse an experiment name DVC would refuse (git's ref-name rules, which DVC checks with
    dulwich, and no `/`), or one `dvc exp run -n` would read as an option."""
    from dulwich.refs import check_ref_format

    ref = f"refs/exps/00/{'0' * 38}/{name}".encode()
    too_long = len(name.encode()) > MAX_EXP_NAME  # git keeps a ref as a file: 255 bytes a name
    # Printable only: a right-to-left override would reorder every line that shows the name.
    odd = not name.isprintable() or name.startswith("-") or "/" in name
    if too_long or odd or not name or not check_ref_format(ref):
        raise ParamsError(
            f"experiment name {short(name)} is not one DVC takes: no spaces, '/', '..', '~', "
            "'^', ':', '?', '*', '[', '\\', '@{', no leading '-' or trailing '.' or '.lock' "
            f"(git check-ref-format), printable, at most {MAX_EXP_NAME} bytes; pass another --name"
        )


def variants(recipe: dict[str, Any], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{variant: changes}: baseline, recipe, and each change of the recipe alone (in file order;
    a key whose value params.yaml already has is no change; `seeds` is none)."""
    current = flatten(params)
    # `<section>.seeds` is how many members every variant trains (plan.py), not a change.
    recipe = {k: v for k, v in recipe.items() if not k.endswith(".seeds")}
    changed = {k: v for k, v in recipe.items() if current.get(k) != v}
    out: dict[str, dict[str, Any]] = {"baseline": {}, "recipe": dict(recipe)}
    for key in changed:
        name = key.rsplit(".", 1)[-1]
        group = next((g for g in COUPLED if name in g), (name,))
        label = next(g for g in group if any(k.rsplit(".", 1)[-1] == g for k in changed))
        out.setdefault(label, {})[key] = changed[key]
    return out


def _value(value: Any) -> str:
    """A value as `dvc exp run -S` writes it back to YAML (true/false/null, numbers as is)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def compare_commands(
    recipe_path: Path,
    params_path: Path,
    name: str,
    only: list[str] | None,
    extra: list[str],
    check_data: bool = True,
    seeds: int | None = None,
) -> list[list[str]]:
    """The `dvc exp run --queue` command of every variant (with `seeds`, N members each); every
    name and value is checked before any is returned (nothing is queued when one would be
    refused)."""
    return compare_plan(recipe_path, params_path, name, only, extra, check_data, seeds)[0]


def compare_plan(
    recipe_path: Path,
    params_path: Path,
    name: str,
    only: list[str] | None,
    extra: list[str],
    check_data: bool = True,
    seeds: int | None = None,
) -> tuple[list[list[str]], list[tuple[str, int, int]]]:
    """compare_commands' commands, and (section, members, epochs) of each variant's run."""
    check_exp_name(name)
    given = parse_sets(extra)  # a bad -S is named before the recipe is read
    table, sections = compared(recipe_path, params_path, only)
    members, said = plan.seeds_for_every_variant(
        read_recipe(recipe_path, params_path), given, seeds, sections, recipe_path.name
    )
    for level, line in said:
        log.log(level, line)
    extra = [e for e in extra if e.partition("=")[0] not in members]
    extra += [f"{k}={_value(v)}" for k, v in members.items()]
    overrides = parse_sets(extra)
    base = read_yaml(params_path)
    stages = [STAGES[s] for s in sections]
    commands, runs = [], []
    for variant, changes in table.items():
        # Each variant must be valid on its own, not only the whole recipe (the -S values are
        # checked as DVC will read them: YAML).
        each = {**changes, **overrides}
        p = parse_params(apply(base, each), f"{params_path.name} with variant {variant}")
        runs += [(s, getattr(p, s).seeds, getattr(p, s).epochs) for s in sections]
        sets = [a for k, v in changes.items() for a in ("-S", f"{k}={_value(v)}")]
        for item in extra:
            sets += ["-S", item]
        # -f -s: every variant trains now, its stage alone. Unforced, the baseline would be HEAD's
        # results and a variant DVC ran before would come from its run-cache: neither would log
        # a run to the sweep.
        check_exp_name(f"{name}.{variant}")
        commands.append(
            ["dvc", "exp", "run", "--queue", "-f", "-s", "-n", f"{name}.{variant}", *sets, *stages]
        )
    if check_data:  # after every variant is checked: a refusal above needs no repository
        params = parse_params(base, params_path.name)
        _check_committed_data([f"download@{getattr(params, s).dataset}" for s in sections])
    _check_names_free([f"{name}.{v}" for v in table], quiet=not check_data)
    return commands, runs


def _check_names_free(names: list[str], quiet: bool) -> None:
    """Refuse names the last commit's experiments have already: `-f` would replace them."""
    existing, why = plan.existing_experiments()
    if existing is None:
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "names not checked against existing experiments (dvc exp list: %s)",
            why,
        )
        return
    taken = [n for n in names if n in existing]
    if taken:
        raise ParamsError(
            f"experiment {taken[0]} exists already on this commit ({len(taken)} of the "
            f"{len(names)} names do): queued, it would replace it; pass another --name or "
            f"remove them (dvc exp remove {' '.join(taken)})"
        )


def compared(
    recipe_path: Path, params_path: Path, only: list[str] | None
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The variants to compare ({variant: changes}, `--only` applied) and the training sections
    the recipe changes."""
    recipe = read_recipe(recipe_path, params_path)
    table = variants(recipe, read_yaml(params_path))
    if only:
        unknown = sorted(set(only) - set(table))
        if unknown:
            raise ParamsError(
                f"--only: no variant {', '.join(unknown)} (known: {', '.join(table)})"
            )
        table = {k: v for k, v in table.items() if k in ("baseline", "recipe", *only)}
    sections = sorted({key.split(".")[0] for key in recipe} & STAGES.keys())
    if not sections:
        raise ParamsError(f"{recipe_path}: changes no training section ({', '.join(STAGES)})")
    return table, sections


def queue(commands: list[list[str]]) -> None:
    """Run each `dvc exp run --queue` command; the first that DVC refuses stops the rest with one
    line that names it, DVC's reason and the variants queued before it."""
    done: list[str] = []
    for cmd in commands:
        name = cmd[cmd.index("-n") + 1]
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            reason = " ".join(lines[-1].split())[:200] if lines else f"exit code {proc.returncode}"
            before = (
                f"; already queued: {', '.join(done)} (`dvc queue remove <name>`)" if done else ""
            )
            raise AppliedTorchError(f"dvc did not queue {name}: {reason}{before}")
        done.append(name)


def _check_committed_data(stages: list[str]) -> None:
    """Queued experiments start from the last commit and train on the data its dvc.lock names
    (from the DVC cache): refuse to queue when that commit has none."""
    proc = subprocess.run(["git", "show", "HEAD:dvc.lock"], capture_output=True, text=True)
    locked = {}
    if proc.returncode == 0:
        locked = (yaml.safe_load(proc.stdout) or {}).get("stages") or {}
    missing = [s for s in stages if s not in locked]
    if missing:
        raise ParamsError(
            f"the last commit's dvc.lock has no {', '.join(missing)}: queued experiments start "
            f"from it; run `dvc repro {' '.join(missing)}`, commit dvc.lock, then compare"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m appliedtorch.recipes", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a recipe on top of params.yaml")
    compare = sub.add_parser("compare", help="queue baseline, recipe and each change alone")
    for p in (check, compare):
        p.add_argument("recipe", type=Path)
        p.add_argument("--params", type=Path, default=Path("params.yaml"))
    compare.add_argument("--name", help="sweep name (default: the recipe's file name + -cmp)")
    compare.add_argument("--only", help="comma-separated single changes to queue (default: all)")
    compare.add_argument(
        "-S",
        "--set",
        dest="extra",
        action="append",
        default=[],
        help="key=value applied to every variant (e.g. cnn.train_limit=1000)",
    )
    compare.add_argument("--dry-run", action="store_true", help="print the commands only")
    compare.add_argument("--seeds", type=int, help="members per variant (sets <section>.seeds)")
    compare.add_argument(
        "--results",
        action="store_true",
        help="print each variant's mean ± 95 %% CI and Welch's p (once the queue has run)",
    )
    args = parser.parse_args(argv)

    def body() -> None:
        if args.command == "check":
            recipe = read_recipe(args.recipe, args.params)
            print(f"{args.recipe}: ok ({len(recipe)} keys on top of {args.params})")
            return
        name = args.name or f"{args.recipe.stem}-cmp"
        only = args.only.split(",") if args.only else None
        if args.results:
            check_exp_name(name)
            table, sections = compared(args.recipe, args.params, only)
            print("\n".join(results_lines(name, table, sections, shown_experiments())))
            return
        if args.seeds is not None and not 1 <= args.seeds <= MAX_SEEDS:
            raise ParamsError(f"--seeds must be 1..{MAX_SEEDS} (got {short(args.seeds)})")
        commands, runs = compare_plan(
            args.recipe, args.params, name, only, args.extra, not args.dry_run, args.seeds
        )
        for cmd in commands:
            print(" ".join(cmd), flush=True)
        for level, line in plan.cost_lines(runs, args.params.resolve().parent):
            log.log(level, line)
        if not args.dry_run:
            queue(commands)
            print(
                "queued; run them with `dvc queue start -j 1`, then `dvc exp show --only-changed`"
            )

    run_stage(body)


if __name__ == "__main__":
    main(sys.argv[1:])
