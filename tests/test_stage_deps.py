"""Each stage's `deps` in dvc.yaml are exactly the project code it loads; imports run one way.

A stage that loads a file its `deps` do not name would not rerun when that file changes; a stage
that depends on more than it loads reruns for nothing (an edit to the MLflow code re-downloaded
the data). Statically, every module a stage script can import (at top level or inside functions,
followed through the project) must be what its code deps name, a folder standing for all of its
modules. Each stage script is also imported in a fresh interpreter and what it loaded compared
with dvc.yaml (lazy imports are recorded during real stage runs by tests/test_pipeline.py, with
`helpers.deps.deps_cover`). The import graph: no library module imports a stage, the shared
layers (`core`, then `machine` and `tracking`) import only the layers below them, no domain
subpackage imports another (but `classify` reads `data`), only `tracking` imports mlflow, and
the download stages load none of it (docs/architecture.md draws it).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, REPO
from helpers.deps import (
    code_closure,
    code_entries,
    deps_cover,
    imported_modules,
    required_code,
    schema_only,
    script_deps,
    stage_deps,
    stage_script,
)

SRC = REPO / "src" / "appliedtorch"
STAGE_SCRIPTS = sorted(p.stem for p in (REPO / "stages").glob("*.py"))

# Prints the repository files that importing the stage script loaded, as JSON.
LOADED = """
import json, runpy, sys
from pathlib import Path
root = Path(sys.argv[2]).resolve()
env_root = Path(sys.prefix).resolve()  # a virtual environment inside the repository is not code
runpy.run_path(sys.argv[1], run_name="imported_by_test")  # not __main__: main() does not run
files = set()
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if not f or not Path(f).is_file() or "site-packages" in Path(f).parts:
        continue
    f = Path(f).resolve()
    if f.is_relative_to(root) and not f.is_relative_to(env_root):
        files.add(f.relative_to(root).as_posix())
mlflow = any(name == "mlflow" or name.startswith("mlflow.") for name in sys.modules)
print(json.dumps({"files": sorted(files), "mlflow": mlflow}))
"""


def uncovered(loaded: list[str], deps: list[str]) -> list[str]:
    """Project files the stage loaded that its deps do not cover (the script itself included)."""
    return [f for f in loaded if not deps_cover(deps, f)]


def loaded_on_import(script: str) -> list[str]:
    """The repository files a fresh interpreter loads when it imports `script`."""
    return import_report(script)["files"]


@functools.cache
def import_report(script: str) -> dict:
    """{"files": what importing `script` in a fresh interpreter loaded, "mlflow": whether mlflow
    was among it}."""
    env = dict(os.environ)
    # The repository's own src/, whatever an editable install elsewhere points at.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [PYTHON, "-c", LOADED, str(REPO / script), str(REPO)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_stage_script_is_a_dvc_stage():
    assert sorted(Path(s).stem for s in script_deps()) == STAGE_SCRIPTS


def test_stages_that_share_a_script_depend_on_the_same_code():
    by_script: dict[str, set[tuple[str, ...]]] = {}
    for deps in stage_deps().values():
        by_script.setdefault(stage_script(deps), set()).add(tuple(code_entries(deps)))
    assert {k: v for k, v in by_script.items() if len(v) > 1} == {}


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_stage_imports_only_what_its_deps_cover(stage):
    deps = stage_deps()[stage]
    script = stage_script(deps)
    deps = deps + sorted(schema_only(stage))  # loaded to check the rest of params.yaml
    loaded = loaded_on_import(script)
    # Loaded from this repository, not from an installed copy elsewhere: else nothing is checked.
    assert "src/appliedtorch/__init__.py" in loaded, loaded
    assert "src/appliedtorch/core/params.py" in loaded, loaded
    assert uncovered(loaded, deps) == [], f"{script} loads files outside its deps {deps}"
    assert [f for f in loaded if f.startswith("stages/")] == [], "a stage imports a stage"


def test_deps_cover():
    deps = ["stages/pinn.py", "src/appliedtorch/core", "src/appliedtorch/__init__.py"]
    assert deps_cover(deps, "src/appliedtorch/core/params.py")
    assert deps_cover(deps, "stages/pinn.py")
    assert not deps_cover(deps, "src/appliedtorch/core_extra/x.py")
    assert not deps_cover(deps, "src/appliedtorch/classify/training/loop.py")
    assert uncovered(["src/appliedtorch/demos/checks.py"], deps)


LIBRARY = sorted(SRC.rglob("*.py"))


def test_no_library_module_imports_a_stage():
    stage_modules = {"stages", *STAGE_SCRIPTS}
    bad = {
        str(path.relative_to(REPO)): sorted(n for n in names if n.split(".")[0] in stage_modules)
        for path in LIBRARY
        if (names := imported_modules(path))
    }
    assert {k: v for k, v in bad.items() if v} == {}


# The shared layers, bottom up: `core` (params machinery, errors, files, the stage wrapper), then
# `machine` (hardware facts, timed `auto`, memory budget) and `tracking` (MLflow). Each imports
# only itself and the layers below; the stages' subpackages (data, classify, ...) sit above.
LAYERS = ({"core"}, {"machine", "tracking"})


def test_shared_layers_import_only_the_layers_below():
    subpackages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert {"core", "machine", "tracking", "data", "classify", "pinn", "demos"} <= subpackages
    bad, below = {}, set()
    for layer in LAYERS:
        for package in sorted(layer):
            allowed = below | {package}
            for path in sorted((SRC / package).rglob("*.py")):
                names = imported_modules(path)
                other = sorted(
                    n
                    for n in names
                    if n.startswith("appliedtorch.") and n.split(".")[1] in subpackages - allowed
                )
                if other:
                    bad[str(path.relative_to(REPO))] = other
        below |= layer
    assert bad == {}


# The domain subpackages, above the shared layers: each imports no other but what it reads here.
DOMAIN_READS = {"data": set(), "classify": {"data"}, "pinn": set(), "demos": set(), "report": set()}


def test_domain_subpackages_import_no_other_domain_subpackage():
    bad = {}
    for package, reads in DOMAIN_READS.items():
        others = set(DOMAIN_READS) - reads - {package}
        for path in sorted((SRC / package).rglob("*.py")):
            names = sorted(
                n
                for n in imported_modules(path)
                if n.startswith("appliedtorch.") and n.split(".")[1] in others
            )
            if names:
                bad[str(path.relative_to(REPO))] = names
    assert bad == {}


def test_import_checks_see_lazy_and_relative_imports(tmp_path):
    """The static check finds imports inside functions and `from .. import x` forms."""
    probe = tmp_path / "appliedtorch" / "core" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "def f():\n    from .. import pinn\n    from .utils import x\n    import train_mlp\n"
    )
    names = imported_modules(probe, root=tmp_path)
    assert {"appliedtorch.pinn", "appliedtorch.core.utils", "train_mlp"} <= names


def code_deps(deps: list[str]) -> set[str]:
    """The Python files a stage's deps name under stages/ and src/, a folder as its modules."""
    out = set()
    for dep in deps:
        path = REPO / dep
        if dep.startswith(("stages/", "src/")) and path.is_dir():
            out |= {
                f.relative_to(REPO).as_posix()
                for f in path.rglob("*.py")
                if "__pycache__" not in f.parts
            }
        elif dep.startswith(("stages/", "src/")):
            out.add(dep)
    return out


@pytest.mark.parametrize("stage", sorted(stage_deps()))
def test_stage_code_deps_are_exactly_what_it_imports(stage):
    imported, named = required_code(stage), code_deps(stage_deps()[stage])
    assert "src/appliedtorch/params.py" in imported  # the walk follows the project's imports
    missing, extra = sorted(imported - named), sorted(named - imported)
    assert (missing, extra) == ([], []), (
        f"dvc.yaml, {stage}'s deps: add {missing}, remove {extra} "
        "(a folder dep stands for all its modules: list files when the stage loads only some)"
    )


def test_code_closure_follows_lazy_imports_and_skips_type_checking():
    closure = code_closure("stages/train.py")
    assert "src/appliedtorch/plots.py" in closure  # imported inside a function only
    assert "src/appliedtorch/classify/inference/predict.py" not in closure


def mlflow_importers() -> list[str]:
    """The files under src/ that import mlflow (anywhere in them)."""
    return sorted(
        path.relative_to(REPO).as_posix()
        for path in LIBRARY
        if any(n == "mlflow" or n.startswith("mlflow.") for n in imported_modules(path))
    )


def test_only_tracking_imports_mlflow():
    importers = mlflow_importers()
    assert importers, "the check finds no mlflow import at all"
    assert [f for f in importers if not f.startswith("src/appliedtorch/tracking/")] == []


def test_download_stage_needs_no_mlflow_code():
    deps = stage_deps()["download"]
    assert not deps_cover(deps, "src/appliedtorch/tracking/__init__.py")
    assert [f for f in mlflow_importers() if deps_cover(deps, f)] == []
    assert not import_report("stages/download.py")["mlflow"]


def test_a_schema_edit_in_one_section_reruns_only_the_stages_that_read_it():
    """Every stage checks the whole params file, but pinn/params.py (the pinn, pinn_inverse and
    pinn_family sections) is the dep of the stages that read them, and of no download or
    training stage."""
    readers = sorted(s for s, deps in stage_deps().items() if "src/appliedtorch/pinn" in deps or
                     deps_cover(deps, "src/appliedtorch/pinn/params.py"))  # fmt: skip
    assert readers == ["pinn", "pinn_family", "pinn_inverse", "pinn_observations", "report"]
    assert "src/appliedtorch/pinn/params.py" in schema_only("train_mlp")
    assert "src/appliedtorch/pinn/params.py" in loaded_on_import("stages/train.py")
    assert "src/appliedtorch/classify/params.py" in required_code("train_mlp")
