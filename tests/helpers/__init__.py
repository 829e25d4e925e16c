"""Helpers the test modules share: test modules import these, never each other.

    from helpers import REPO, merge, run_script
    from helpers.repo import make_workspace, run

- `helpers` (here): the repository's paths, this interpreter, `merge` for params overrides and
  `run_script` for one stage script.
- `helpers.repo`: a git+DVC copy of the project, `run` and `run_queue` for its commands, the
  SHRUNK params and `build_pipeline` behind the session's `built_pipeline` fixture.
- `helpers.deps`: each stage script's `deps` in dvc.yaml.
- `helpers.stage_runs`: a stage run in this process, its one error line, its leftovers.
- `helpers.servers`: free ports, HTTP waits, a real `mlflow server`, PostgreSQL and S3 servers.
- `helpers.data`: tiny synthetic datasets in memory.
- `helpers.models`: tiny untrained classifier model files.
- `helpers.same_numbers`: the fixed-seed run whose numbers tests/golden/ records.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = Path(PYTHON).parent  # dvc, mlflow, moto_server: the ones installed beside this interpreter


def merge(base: dict, over: dict) -> dict:
    """`base` with `over` laid on it, nested dicts merged key by key (params overrides)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_script(
    script: str | Path,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run a stage script (path relative to the repo) with this interpreter; capture output.
    A None in `env` removes that variable."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run(
        [PYTHON, str(REPO / script), *map(str, args)],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
