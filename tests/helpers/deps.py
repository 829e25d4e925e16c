"""Each DVC stage's script, code deps and params sections, and the project files a script can
import (tests/test_stage_deps.py and tests/test_pipeline.py).

    deps = stage_deps()["pinn"]
    deps_cover(deps, "src/appliedtorch/pinn/solver.py")
    required_code("pinn")   # what its deps must name: its imports, less other sections' schemas
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from helpers import REPO

# Which subpackage holds each params section's schema (src/appliedtorch/<package>/params.py).
SECTION_PACKAGES = {"data": "data", "mlp": "classify", "cnn": "classify", "pinn": "pinn"}
SECTION_PACKAGES |= {"pinn_inverse": "pinn", "pinn_family": "pinn", "math": "demos"}


def _stages(dvc_yaml: Path) -> dict[str, dict]:
    """dvc.yaml's stages, a foreach stage's body under its name (`${item}` as its first item)."""
    out = {}
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        if "do" in stage:
            item = str(stage["foreach"][0])
            stage = yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${item}", item))
        out[name] = stage
    return out


def stage_deps(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, list[str]]:
    """`{stage name: deps}` for every stage in dvc.yaml."""
    return {name: stage["deps"] for name, stage in _stages(dvc_yaml).items()}


def stage_script(deps: list[str]) -> str:
    """The one stages/*.py among a stage's deps."""
    (script,) = [d for d in deps if d.startswith("stages/") and d.endswith(".py")]
    return script


def script_deps(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, list[str]]:
    """`{script: code deps}`: the stages a script runs depend on the same code."""
    out: dict[str, list[str]] = {}
    for deps in stage_deps(dvc_yaml).values():
        out.setdefault(stage_script(deps), code_entries(deps))
    return out


def code_entries(deps: list[str]) -> list[str]:
    """The deps that are project code (stages/ and src/), not data or reports."""
    return sorted(d for d in deps if d.startswith(("stages/", "src/")))


def stage_sections(name: str, dvc_yaml: Path = REPO / "dvc.yaml") -> set[str]:
    """The params sections stage `name` reads: the first word of each of its `params` keys."""
    keys = _stages(dvc_yaml)[name].get("params", [])
    return {str(k).split(".")[0] for k in keys if isinstance(k, str)}


def deps_cover(deps: list[str], path: str) -> bool:
    """Whether a repository-relative file is one of `deps` or lies inside one of them."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


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


def module_file(name: str, root: Path = REPO / "src") -> Path | None:
    """The file of module `name` under `root` (a package's __init__.py), or None."""
    base = root.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def code_closure(script: str, skip: frozenset[str] = frozenset()) -> set[str]:
    """Every project file importing `script` can load, lazy imports included: its imports
    followed through the project, with each imported module's parent packages. An import of a
    module in `skip` (repository-relative files) is not followed, nor are its packages added."""
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
            files = [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))]
            if files and files[-1].relative_to(REPO).as_posix() in skip:
                continue
            todo += files
    return {p.relative_to(REPO).as_posix() for p in seen}


def unread_schemas(name: str, dvc_yaml: Path = REPO / "dvc.yaml") -> frozenset[str]:
    """The schema modules of the params sections stage `name` does not read."""
    read = {SECTION_PACKAGES.get(s) for s in stage_sections(name, dvc_yaml)}
    packages = set(SECTION_PACKAGES.values()) - read
    return frozenset(f"src/appliedtorch/{p}/params.py" for p in packages)


def required_code(name: str, dvc_yaml: Path = REPO / "dvc.yaml") -> set[str]:
    """The files stage `name`'s code deps must name: what its script imports, less what it
    loads only through the schemas of sections it does not read (it checks the whole params
    file, but another section's schema cannot change its result)."""
    script = stage_script(stage_deps(dvc_yaml)[name])
    return code_closure(script, unread_schemas(name, dvc_yaml))


def schema_only(name: str, dvc_yaml: Path = REPO / "dvc.yaml") -> set[str]:
    """The files stage `name` loads only to check other sections of the params file."""
    script = stage_script(stage_deps(dvc_yaml)[name])
    return code_closure(script) - required_code(name, dvc_yaml)
