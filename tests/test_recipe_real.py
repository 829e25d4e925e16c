"""recipes/cnn-fast.yaml stays a valid recipe for today's params.yaml, on every dataset.

The recipe was tuned on real Fashion-MNIST with benchmarks/recipe.py (docs/classifiers.md has
the table); these tests are cheap checks that it, each of its single changes and the benchmark's
variants still validate, so a renamed or re-bounded params key breaks a test, not a user's run.
No training here: tests/test_real_images.py trains on real images.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

import pytest
import yaml

from appliedtorch.core.errors import ParamsError
from appliedtorch.data.datasets import DATASETS
from appliedtorch.params import parse_params
from appliedtorch.recipes import apply, read_recipe, variants
from helpers import REPO

RECIPE = REPO / "recipes" / "cnn-fast.yaml"
PARAMS = REPO / "params.yaml"


def test_recipe_file_passes_recipes_check():
    cmd = [sys.executable, "-m", "appliedtorch.recipes", "check", "recipes/cnn-fast.yaml"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    keys = len(read_recipe(RECIPE, PARAMS))
    assert proc.stdout.strip() == f"recipes/cnn-fast.yaml: ok ({keys} keys on top of params.yaml)"


@pytest.mark.parametrize("dataset", DATASETS)
def test_recipe_and_each_change_alone_validate_on_every_dataset(dataset):
    recipe = read_recipe(RECIPE, PARAMS)
    # The recipe is a training recipe for any dataset; the dataset is the user's choice.
    assert not any(key.endswith(".dataset") for key in recipe)
    base = apply(yaml.safe_load(PARAMS.read_text()), {"cnn.dataset": dataset})
    table = variants(recipe, base)
    assert len(table) > 3  # baseline, recipe and at least two single changes
    for name, changes in table.items():
        cnn = parse_params(apply(base, changes), f"variant {name}").cnn
        assert cnn.dataset == dataset
        assert all(getattr(cnn, key.split(".", 1)[1]) == value for key, value in changes.items())


def load_benchmark():
    spec = importlib.util.spec_from_file_location("recipe_benchmark", REPO / "benchmarks/recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmark_args(variant: str) -> argparse.Namespace:
    return load_benchmark().parse_args(
        [
            "--recipe",
            str(RECIPE),
            "--params",
            str(PARAMS),
            "--variant",
            variant,
            "-S",
            "cnn.threads=1",
        ]
    )


def test_benchmark_builds_variants_alone_and_together():
    bench = load_benchmark()
    recipe = read_recipe(RECIPE, PARAMS)
    table = variants(recipe, yaml.safe_load(PARAMS.read_text()))
    single = [name for name in table if name not in ("baseline", "recipe")]
    pair = f"{single[0]}+{single[1]}"
    configs = bench.configs(benchmark_args(f"baseline,recipe,{pair}"), "fashion-mnist")
    assert list(configs) == ["baseline", "recipe", pair]
    assert all(c.dataset == "fashion-mnist" and c.threads == 1 for c in configs.values())
    tutorial = parse_params(yaml.safe_load(PARAMS.read_text())).cnn
    assert configs["baseline"].lr == tutorial.lr and configs["baseline"].arch == tutorial.arch
    for key, value in recipe.items():
        assert getattr(configs["recipe"], key.split(".", 1)[1]) == value
    both = {**table[single[0]], **table[single[1]]}
    for key, value in both.items():
        assert getattr(configs[pair], key.split(".", 1)[1]) == value
    with pytest.raises(ParamsError, match="no variant nosuch"):
        bench.configs(benchmark_args("baseline,nosuch"), "fashion-mnist")
