"""Each stage script's `deps` in dvc.yaml (tests/test_stage_deps.py and tests/test_pipeline.py).

deps_cover(stage_deps()["stages/pinn.py"], "src/appliedtorch/pinn/solver.py")
"""

from __future__ import annotations

from pathlib import Path

import yaml

from helpers import REPO


def stage_deps(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, list[str]]:
    """`{script path: deps}` for every stage in dvc.yaml (foreach stages share one script)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out: dict[str, list[str]] = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        scripts = [d for d in body["deps"] if d.startswith("stages/") and d.endswith(".py")]
        assert len(scripts) == 1, f"stage {name}: expected one stages/*.py dep, got {scripts}"
        assert scripts[0] in body["cmd"], f"stage {name} does not run its own script {scripts[0]}"
        out[scripts[0]] = body["deps"]
    return out


def deps_cover(deps: list[str], path: str) -> bool:
    """Whether a repository-relative file is one of `deps` or lies inside one of them."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)
