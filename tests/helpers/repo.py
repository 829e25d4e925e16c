"""The project in a temporary git+DVC workspace, and the commands run in it.

    ws, env = make_workspace(tmp_path, SHRUNK, tracking_uri=uri)
    run([str(BIN / "dvc"), "repro"], ws, env)

`build_pipeline` is the session's one full `dvc repro` (the `built_pipeline` fixture in
conftest.py); `copy_workspace` copies its result for a test that changes it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from helpers import BIN, REPO, merge

GIT_ENV = {
    "GIT_AUTHOR_NAME": "appliedtorch-tests",
    "GIT_AUTHOR_EMAIL": "tests@appliedtorch.invalid",
    "GIT_COMMITTER_NAME": "appliedtorch-tests",
    "GIT_COMMITTER_EMAIL": "tests@appliedtorch.invalid",
}

# Small enough for CI, large enough that every stage does real work.
SHRUNK = {
    "device": "cpu",
    "data": {
        "source": "synthetic",
        "synthetic": {
            "mnist_train": 1200,
            "mnist_test": 300,
            "cifar10_train": 600,
            "cifar10_test": 200,
        },
    },
    "mlp": {"epochs": 2, "train_limit": 1000},
    "cnn": {"epochs": 1, "train_limit": 500},
    "pinn": {"adam_steps": 300, "lbfgs_steps": 50},
    "pinn_inverse": {"adam_steps": 100, "lbfgs_steps": 30, "lm_steps": 50},
    "pinn_family": {
        "hidden_sizes": [6, 6],
        "x_points": 12,
        "k_points": 6,
        "adam_steps": 50,
        "lbfgs_steps": 10,
        "lm_steps": 30,
        "eval_k_points": 20,
        "eval_x_points": 100,
    },
}


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run `cmd` in `cwd`; with `check`, a nonzero exit fails the test with its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_queue(ws: Path, env: dict, jobs: int = 1, timeout: float = 600, kill: bool = False) -> str:
    """`dvc queue start -j jobs`, wait until nothing is queued or running; `dvc queue status`."""
    dvc = str(BIN / "dvc")
    try:
        run([dvc, "queue", "start", "-j", str(jobs)], ws, env)
        deadline = time.monotonic() + timeout
        while True:
            status = run([dvc, "queue", "status"], ws, env).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
            assert time.monotonic() < deadline, status
            time.sleep(2)
    finally:
        run([dvc, "queue", "stop", *(["--kill"] if kill else [])], ws, env, check=False)


def make_workspace(root: Path, overrides: dict, tracking_uri: str) -> tuple[Path, dict]:
    """Copy the project into a fresh git+DVC repository; return it and the env to run DVC in."""
    ws = root / "ws"
    ws.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, ws / name)
    for name in ("stages", "src", "recipes"):
        shutil.copytree(
            REPO / name, ws / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = workspace_env(ws, tracking_uri)
    run(["git", "init", "-q", "-b", "main"], ws, env)
    run([str(BIN / "dvc"), "init", "-q"], ws, env)
    run([str(BIN / "dvc"), "config", "core.analytics", "false"], ws, env)
    # The project's own plot templates (the confusion matrices'), committed as a clone has them.
    shutil.copytree(REPO / ".dvc" / "plots", ws / ".dvc" / "plots")
    run(["git", "add", "-A"], ws, env)
    run(["git", "commit", "-qm", "workspace"], ws, env)
    return ws, env


def workspace_env(ws: Path, tracking_uri: str) -> dict:
    """The environment that runs DVC, git and the stages in the workspace `ws`."""
    env = {
        **os.environ,
        **GIT_ENV,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DVC_NO_ANALYTICS": "1",
        # The stages run the workspace's copy of the code (as a user's editable install would),
        # so edits there count, and Python's bytecode lands there.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ws / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    # Bytecode writing on, as on every user's machine (this environment and CI turn it off).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def copy_workspace(built: tuple[Path, dict], dest: Path) -> tuple[Path, dict]:
    """A copy of a built workspace (git, DVC cache, bytecode and mlflow.db included) at dest/ws,
    with the environment that runs its own code."""
    ws, env = built
    copy = dest / "ws"
    shutil.copytree(ws, copy, symlinks=True)
    pythonpath = env["PYTHONPATH"].replace(str(ws / "src"), str(copy / "src"))
    return copy, {**env, "PYTHONPATH": pythonpath}


# Put on PYTHONPATH as `sitecustomize`: every Python process records, at exit, the workspace files
# it loaded (lazy imports inside functions included) and its command line.
RECORD_LOADED = """
import atexit, json, os, sys
from pathlib import Path


def _record_loaded_files():
    root = Path(os.environ["RECORD_LOADED_ROOT"]).resolve()
    env_root = Path(sys.prefix).resolve()  # a virtual environment inside the workspace is not code
    files = set()
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if not f or not Path(f).is_file() or "site-packages" in Path(f).parts:
            continue
        f = Path(f).resolve()
        if f.is_relative_to(root) and not f.is_relative_to(env_root):
            files.add(f.relative_to(root).as_posix())
    if files:
        out = Path(os.environ["RECORD_LOADED_DIR"]) / f"{os.getpid()}.json"
        script = str(Path(sys.argv[0]).resolve())
        out.write_text(json.dumps({"script": script, "argv": sys.argv, "files": sorted(files)}))


atexit.register(_record_loaded_files)
"""


def record_loaded_files(env: dict, ws: Path, root: Path) -> Path:
    """Make every Python process started with `env` record the `ws` files it loads; return where."""
    site, out = root / "record-site", root / "loaded"
    site.mkdir()
    out.mkdir()
    (site / "sitecustomize.py").write_text(RECORD_LOADED)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(site)])
    env["RECORD_LOADED_ROOT"], env["RECORD_LOADED_DIR"] = str(ws), str(out)
    return out


def build_pipeline(root: Path, template_db: Path) -> tuple[Path, dict]:
    """`dvc repro` of every stage with SHRUNK params in a workspace under `root`, then dvc.lock
    committed; returns the workspace and the environment that runs its code.

    The runs go to the workspace's own mlflow.db (the relative path in params.yaml, as a user
    runs it; no MLFLOW_TRACKING_URI), a copy of `template_db`. Every Python process of the repro
    records the workspace files it loaded in `root / "loaded"` (see `record_loaded_files`)."""
    ws, env = make_workspace(root, SHRUNK, tracking_uri="unused")
    del env["MLFLOW_TRACKING_URI"]
    shutil.copy(template_db, ws / "mlflow.db")  # git-ignored; skips the schema migration
    plain = dict(env)
    record_loaded_files(env, ws, root)
    run([str(BIN / "dvc"), "repro"], ws, env)
    run(["git", "add", "-A"], ws, plain)
    run(["git", "commit", "-qm", "built"], ws, plain)
    return ws, plain


def mnist_mlp_stages(pipeline: dict) -> dict:
    """The MNIST half of a parsed dvc.yaml: `datasets`, `download@mnist`, `data@mlp` (on the
    MNIST directory only) and `train_mlp`: a workspace that shares or sweeps the MLP alone."""
    names = ("datasets", "download", "data", "train_mlp")
    stages = {name: pipeline["stages"][name] for name in names}
    stages["download"]["foreach"] = ["mnist"]
    stages["data"]["foreach"] = ["mlp"]
    deps = stages["data"]["do"]["deps"]
    stages["data"]["do"]["deps"] = [
        d for d in deps if not d.startswith("data/raw/") or d == "data/raw/mnist"
    ]
    return stages
