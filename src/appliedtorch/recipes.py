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

`--seeds N` sets `<section>.seeds=N` on every variant: each trains N members (classify/ensemble.py)
and its metrics.json holds their mean, sample sd and 95 % CI. `--results`, once the queue has
run, prints each variant's test accuracy as mean ± CI half-width with Welch's t-test p-value
against the baseline (unequal variances: `scipy.stats.ttest_ind_from_stats`, the same test as
`ttest_ind(equal_var=False)` on the members' values), read from `dvc exp show --json`.

The module sits outside every stage's DVC deps, like `appliedtorch.params`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from appliedtorch.classify.params import MAX_SEEDS
from appliedtorch.core.cli import run_stage
from appliedtorch.core.errors import AppliedTorchError, ParamsError
from appliedtorch.core.params import parse_yaml, read_yaml, short
from appliedtorch.core.utils import flatten
from appliedtorch.params import parse_params

# What `dvc exp run` takes from one line of the README's sed one-liner: a (dotted) key, a colon,
# one value with no spaces (no inline comment).
_LINE = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*: *[^ #]+")
_KEY = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
MAX_SET_CHARS = 1000  # a -S value is one number, name or short list
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
    if not name or "/" in name or name.startswith("-") or not check_ref_format(ref):
        raise ParamsError(
            f"experiment name {short(name)} is not one DVC takes: no spaces, '/', '..', '~', "
            "'^', ':', '?', '*', '[', '\\', '@{', no leading '-' or trailing '.' or '.lock' "
            "(git check-ref-format); pass another --name"
        )


def variants(recipe: dict[str, Any], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{variant: changes}: baseline, recipe, and each change of the recipe alone (in file order;
    a key whose value params.yaml already has is no change)."""
    current = flatten(params)
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
    check_exp_name(name)
    parse_sets(extra)  # a bad -S is named before the recipe is read
    table, sections = compared(recipe_path, params_path, only)
    if seeds is not None:
        extra = [*extra, *(f"{s}.seeds={seeds}" for s in sections)]
    overrides = parse_sets(extra)
    base = read_yaml(params_path)
    stages = [STAGES[s] for s in sections]
    commands = []
    for variant, changes in table.items():
        # Each variant must be valid on its own, not only the whole recipe (the -S values are
        # checked as DVC will read them: YAML).
        each = {**changes, **overrides}
        parse_params(apply(base, each), f"{params_path.name} with variant {variant}")
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
    return commands


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


# --------------------------------------------------------------------------------------------
# Results: each variant's mean ± CI and Welch's test against the baseline


def shown_experiments() -> dict[str, dict[str, Any]]:
    """{experiment name: its params and metrics} from `dvc exp show --json` in this repository."""
    proc = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        raise AppliedTorchError(
            f"dvc exp show failed: {lines[-1][:200] if lines else proc.returncode}"
        )
    out = {}
    for rev in json.loads(proc.stdout or "[]"):
        for exp in rev.get("experiments") or []:
            revs = exp.get("revs") or [{}]
            if exp.get("name"):
                out[exp["name"]] = revs[0].get("data") or {}
    return out


def estimate(data: dict[str, Any], section: str, metric: str = "test_accuracy") -> dict[str, Any]:
    """An experiment's `metric`: {n, mean, sd, low, high, ensemble} from its metrics.json, where
    `seeds` > 1 wrote the members' statistics; a single net's value alone otherwise."""
    metrics = (data.get("metrics") or {}).get(f"reports/{section}/metrics.json", {}).get("data")
    params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
    if not isinstance(metrics, dict) or metric not in metrics:
        return {}
    n = int((params.get(section) or {}).get("seeds", 1))
    if f"{metric}_mean" not in metrics:
        return {"n": 1, "mean": metrics[metric]}
    return {
        "n": n,
        "mean": metrics[f"{metric}_mean"],
        "sd": metrics[f"{metric}_sd"],
        "low": metrics[f"{metric}_ci95_low"],
        "high": metrics[f"{metric}_ci95_high"],
        "ensemble": metrics[metric],
    }


def welch_p(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """Welch's two-sided t-test p-value of two variants' member means (None without sds)."""
    from scipy import stats

    if "sd" not in a or "sd" not in b:
        return None
    result = stats.ttest_ind_from_stats(
        a["mean"], a["sd"], a["n"], b["mean"], b["sd"], b["n"], equal_var=False
    )
    return float(result.pvalue)


def results_lines(
    name: str, table: dict[str, Any], sections: list[str], shown: dict[str, dict[str, Any]]
) -> list[str]:
    """The comparison as text: per section, one line per variant with its members' mean test
    accuracy ± 95 % CI half-width, the interval, the ensemble's accuracy and Welch's p."""
    lines = []
    for section in sections:
        lines.append(
            f"reports/{section}/metrics.json test_accuracy: members' mean ± 95 % CI (Student's t), "
            "ensemble, Welch's t-test p against baseline"
        )
        base = estimate(shown.get(f"{name}.baseline", {}), section)
        for variant in table:
            est = estimate(shown.get(f"{name}.{variant}", {}), section)
            lines.append(f"  {variant:<14} {result_text(est, base, variant == 'baseline')}")
    return lines


def result_text(est: dict[str, Any], base: dict[str, Any], is_base: bool) -> str:
    """`n=3  61.23 % ± 1.20  [60.03, 62.43] %  ensemble 62.00 %  p=0.0123` for one variant."""
    if not est:
        return "no result (not run yet: `dvc queue start`, then `dvc exp show`)"
    pct = 100 * est["mean"]
    if "sd" not in est:
        return f"n=1  {pct:.2f} %  (no CI with seeds: 1; compare with --seeds N)"
    half = 100 * (est["high"] - est["low"]) / 2
    text = (
        f"n={est['n']}  {pct:.2f} % ± {half:.2f}  [{100 * est['low']:.2f}, "
        f"{100 * est['high']:.2f}] %"
    )
    if "ensemble" in est:  # a sweep's variant of single nets has none (sweep/results.py)
        text += f"  ensemble {100 * est['ensemble']:.2f} %"
    if is_base:
        return text
    p = welch_p(est, base)
    return f"{text}  p={p:.4g}" if p is not None and math.isfinite(p) else f"{text}  p=—"


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
            raise ParamsError(f"--seeds must be 1..{MAX_SEEDS} (got {args.seeds})")
        commands = compare_commands(
            args.recipe, args.params, name, only, args.extra, not args.dry_run, args.seeds
        )
        for cmd in commands:
            print(" ".join(cmd), flush=True)
        if not args.dry_run:
            queue(commands)
            print(
                "queued; run them with `dvc queue start -j 1`, then `dvc exp show --only-changed`"
            )

    run_stage(body)


if __name__ == "__main__":
    main(sys.argv[1:])
