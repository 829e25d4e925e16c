"""Shared fixtures: repository paths, a pre-migrated MLflow database, subprocess helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


# The suite runs on two pytest-xdist workers (`-n 2`, pyproject.toml): most of its time is
# subprocesses importing torch and MLflow, each on one core. A file's tests stay in one worker, so
# a module-scoped fixture is built once; the files that copy the session's built pipeline
# (`built_pipeline`, a full `dvc repro`) share one worker, so that is built once too.
BUILT_PIPELINE_FILES = frozenset({"test_pipeline.py", "test_dvc_contract.py", "test_browser.py"})


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadFileScheduling

    class ByFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "built_pipeline" if Path(file).name in BUILT_PIPELINE_FILES else file

    return ByFile(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses `built_pipeline` outside BUILT_PIPELINE_FILES would build it again."""
    for item in items:
        uses = "built_pipeline" in getattr(item, "fixturenames", ())
        if uses and item.path.name not in BUILT_PIPELINE_FILES:
            raise pytest.UsageError(f"{item.nodeid} uses built_pipeline: add its file to "
                                    "conftest.BUILT_PIPELINE_FILES")  # fmt: skip


@pytest.fixture(scope="session")
def mlflow_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow sqlite database with its schema created once per session.

    Creating the schema takes several seconds; each test copies this file instead.
    """
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="session")
def built_pipeline(
    tmp_path_factory: pytest.TempPathFactory, mlflow_template_db: Path
) -> tuple[Path, dict]:
    """A small git+DVC workspace after `dvc repro` of every stage (test_pipeline's SHRUNK
    params), dvc.lock then committed, its runs in its own mlflow.db (the relative path in
    params.yaml, as a user runs it; no MLFLOW_TRACKING_URI). Every Python process of the repro
    recorded the workspace files it loaded into `ws.parent / "loaded"` (test_pipeline checks them
    against the deps). Built once for the session: copy it (`copy_workspace`) to change it."""
    from test_pipeline import BIN, SHRUNK, make_workspace, record_loaded_files, run

    root = tmp_path_factory.mktemp("built")
    ws, env = make_workspace(root, SHRUNK, tracking_uri="unused")
    del env["MLFLOW_TRACKING_URI"]
    shutil.copy(mlflow_template_db, ws / "mlflow.db")  # git-ignored; skips the schema migration
    plain = dict(env)
    record_loaded_files(env, ws, root)
    run([str(BIN / "dvc"), "repro"], ws, env)
    run(["git", "add", "-A"], ws, plain)
    run(["git", "commit", "-qm", "built"], ws, plain)
    return ws, plain


def copy_workspace(built: tuple[Path, dict], dest: Path) -> tuple[Path, dict]:
    """A copy of a built workspace (git, DVC cache, bytecode and mlflow.db included) at dest/ws,
    with the environment that runs its own code."""
    ws, env = built
    copy = dest / "ws"
    shutil.copytree(ws, copy, symlinks=True)
    pythonpath = env["PYTHONPATH"].replace(str(ws / "src"), str(copy / "src"))
    return copy, {**env, "PYTHONPATH": pythonpath}


@pytest.fixture
def tracking_uri(tmp_path: Path, mlflow_template_db: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh sqlite tracking URI in tmp_path, exported as MLFLOW_TRACKING_URI (subprocesses too)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    # In-process stage_run calls set MLflow's global URI; don't let it leak into later tests.
    import mlflow

    mlflow.set_tracking_uri(None)


@pytest.fixture
def params_file(tmp_path: Path):
    """Write params.yaml (the repo's, with overrides) into tmp_path: `params_file({'mlp': {'lr': 1}})`."""

    def write(overrides: dict | None = None, name: str = "params.yaml") -> Path:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        for section, values in (overrides or {}).items():
            if isinstance(values, dict) and isinstance(params.get(section), dict):
                params[section] = _merge(params[section], values)
            else:
                params[section] = values
        path = tmp_path / name
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    return write


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_script(
    script: str | Path,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run a stage script (path relative to the repo) with this interpreter; capture output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [PYTHON, str(REPO / script), *map(str, args)],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(
    url: str, proc: subprocess.Popen, log_path: Path, timeout: float, interval: float
) -> None:
    """Poll `url` until it answers; RuntimeError with the log's tail if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text()[-2000:]) from None
            time.sleep(interval)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server process; kill it if it has not gone within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def serve_mlflow(
    backend_uri: str,
    artifacts: Path | str,
    log_path: Path,
    workers: int = 2,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run a real `mlflow server` on 127.0.0.1 until the block ends; yield its URL.

    `artifacts` is the --artifacts-destination (a directory or e.g. `s3://bucket/prefix`); `env`
    adds to the server's environment (e.g. MLFLOW_S3_ENDPOINT_URL and AWS credentials).
    """
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [
                str(Path(PYTHON).parent / "mlflow"),
                "server",
                "--backend-store-uri",
                backend_uri,
                "--artifacts-destination",
                str(artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # MLflow 3's GenAI job runner starts ~7 huey worker processes: not needed here.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
        )
        try:
            # A fresh PostgreSQL schema migrates at start: up to 180 s.
            wait_for_http(f"{uri}/health", proc, log_path, timeout=180, interval=0.5)
            yield uri
        finally:
            stop(proc)


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template_db: Path) -> Iterator[str]:
    """A real `mlflow server` with a sqlite backend and artifacts in tmp_path, on 127.0.0.1."""
    db = tmp_path / "server.db"
    shutil.copy(mlflow_template_db, db)  # skips the schema migration at server start
    with serve_mlflow(
        f"sqlite:///{db}", tmp_path / "server-artifacts", tmp_path / "server.log"
    ) as uri:
        yield uri


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A port on 127.0.0.1 that accepts connections (the kernel does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
