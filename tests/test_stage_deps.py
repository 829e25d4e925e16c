"""Each stage's `deps` in dvc.yaml are exactly the project code it loads; imports run one way.

A stage that loads a file its `deps` do not name would not rerun when that file changes; a stage
that depends on more than it loads reruns for nothing (an edit to the MLflow code re-downloaded
the data). Statically, every module a stage script can import (at top level or inside functions,
followed through the project) must be what its code deps name, a folder standing for all of its
modules. Each stage script is also imported in a fresh interpreter and what it loaded compared
with dvc.yaml (lazy imports are recorded during real stage runs by tests/test_pipeline.py, with
`helpers.deps.deps_cover`). The import graph: no library module imports a stage, the shared
layers (`core`, then `machine` and `tracking`) import only the layers below them, only `tracking`
imports mlflow, and the download stages load none of it.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import PYTHON, REPO
from helpers.deps import deps_cover, stage_deps

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
    assert sorted(Path(s).stem for s in stage_deps()) == STAGE_SCRIPTS


@pytest.mark.parametrize("script", sorted(stage_deps()))
def test_stage_imports_only_what_its_deps_cover(script):
    deps = stage_deps()[script]
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
    assert not deps_cover(deps, "src/appliedtorch/classify/loop.py")
    assert uncovered(["src/appliedtorch/demos/checks.py"], deps)


def imported_modules(path: Path, root: Path = REPO / "src", type_checking: bool = True) -> set[str]:
    """Absolute names of every module `path` (under `root`) imports, at top level or in functions;
    with `type_checking=False`, not those under `if TYPE_CHECKING:` (never imported when run)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    names: set[str] = set()
    tree = ast.parse(path.read_text(), str(path))
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            # `from appliedtorch import pinn` imports the subpackage appliedtorch.pinn
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


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


def test_import_checks_see_lazy_and_relative_imports(tmp_path):
    """The static check finds imports inside functions and `from .. import x` forms."""
    probe = tmp_path / "appliedtorch" / "core" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "def f():\n    from .. import pinn\n    from .utils import x\n    import train_mlp\n"
    )
    names = imported_modules(probe, root=tmp_path)
    assert {"appliedtorch.pinn", "appliedtorch.core.utils", "train_mlp"} <= names


def module_file(name: str, root: Path = REPO / "src") -> Path | None:
    """The file of module `name` under `root` (a package's __init__.py), or None."""
    base = root.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def code_closure(script: str) -> set[str]:
    """Every project file importing `script` can load, lazy imports included: its imports
    followed through the project, with each imported module's parent packages."""
    todo, seen = [REPO / script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        root = REPO / "src" if path.is_relative_to(REPO / "src") else path.parent
        for name in imported_modules(path, root=root, type_checking=False):
            parts = name.split(".")
            if parts[0] != "appliedtorch":
                continue
            todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))]
    return {p.relative_to(REPO).as_posix() for p in seen}


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


@pytest.mark.parametrize("script", sorted(stage_deps()))
def test_stage_code_deps_are_exactly_what_it_imports(script):
    imported, named = code_closure(script), code_deps(stage_deps()[script])
    assert "src/appliedtorch/params.py" in imported  # the walk follows the project's imports
    missing, extra = sorted(imported - named), sorted(named - imported)
    assert (missing, extra) == ([], []), (
        f"dvc.yaml, {script}'s deps: add {missing}, remove {extra} "
        "(a folder dep stands for all its modules: list files when the stage loads only some)"
    )


def test_code_closure_follows_lazy_imports_and_skips_type_checking():
    closure = code_closure("stages/train_mlp.py")
    assert "src/appliedtorch/core/plots.py" in closure  # imported inside a function only
    assert "src/appliedtorch/classify/predict.py" not in closure


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
    deps = stage_deps()["stages/download.py"]
    assert not deps_cover(deps, "src/appliedtorch/tracking/__init__.py")
    assert [f for f in mlflow_importers() if deps_cover(deps, f)] == []
    assert not import_report("stages/download.py")["mlflow"]
