"""Each stage's `deps` in dvc.yaml cover every project file the stage loads, and imports run one way.

A stage that loads a file its `deps` do not name would not rerun when that file changes; a stage
that depends on more than it loads reruns for nothing. This imports each stage script in a fresh
interpreter and compares what it loaded with dvc.yaml (imports done lazily, inside functions, are
recorded during real stage runs by tests/test_pipeline.py, with `helpers.deps.deps_cover`). The
import graph is checked statically: no library module imports a stage, and `core` imports no
other appliedtorch subpackage.
"""

from __future__ import annotations

import ast
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
print(json.dumps(sorted(files)))
"""


def uncovered(loaded: list[str], deps: list[str]) -> list[str]:
    """Project files the stage loaded that its deps do not cover (the script itself included)."""
    return [f for f in loaded if not deps_cover(deps, f)]


def loaded_on_import(script: str) -> list[str]:
    """The repository files a fresh interpreter loads when it imports `script`."""
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
    assert deps_cover(deps, "src/appliedtorch/core/tracking.py")
    assert deps_cover(deps, "stages/pinn.py")
    assert not deps_cover(deps, "src/appliedtorch/core_extra/x.py")
    assert not deps_cover(deps, "src/appliedtorch/classify/loop.py")
    assert uncovered(["src/appliedtorch/demos/checks.py"], deps)


def imported_modules(path: Path, root: Path = REPO / "src") -> set[str]:
    """Absolute names of every module `path` (under `root`) imports, at top level or in functions."""
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
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


def test_core_imports_no_other_subpackage():
    subpackages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    assert {"core", "data", "classify", "pinn", "demos", "report"} <= subpackages
    bad = {}
    for path in sorted((SRC / "core").rglob("*.py")):
        names = imported_modules(path)
        other = sorted(
            n
            for n in names
            if n.startswith("appliedtorch.") and n.split(".")[1] in subpackages - {"core"}
        )
        if other:
            bad[str(path.relative_to(REPO))] = other
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
