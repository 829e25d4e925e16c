"""Shared fixtures: a pre-migrated MLflow database, the session's built pipeline, params files,
an `mlflow server`; and the scheduling of test files on pytest-xdist workers.

The helpers these build on are in tests/helpers/ (test modules import those, never each other).
"""

from __future__ import annotations

import os

# Three workers on two cores, and the stages they start beside them: never a quiet machine, so
# idle OpenMP threads sleep in every process of the suite (appliedtorch.core.openmp would
# decide so at most starts; set here, before anything imports appliedtorch, it is decided once).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil  # noqa: E402
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from helpers import REPO, merge
from helpers.repo import build_pipeline
from helpers.servers import serve_mlflow


@pytest.fixture(scope="session", autouse=True)
def autotune_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`auto`'s decisions (appliedtorch.machine.autotune) are cached in a session directory, never
    in the user's ~/.cache; every process the tests start inherits it."""
    path = tmp_path_factory.mktemp("autotune-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("APPLIEDTORCH_CACHE_DIR", str(path))
    yield path
    mp.undo()


# The suite runs on three pytest-xdist workers (`-n 3`, pyproject.toml), one more than the 2
# cores it is timed on: most of its time is subprocesses importing torch and MLflow, each on one
# core, or waiting for servers and DVC queues, so a third worker shortens it (docs/performance.md
# has the times). A file's tests stay in one worker, so
# a module-scoped fixture is built once; the files that copy the session's built pipeline
# (`built_pipeline`, a full `dvc repro`) share one worker, so that is built once too.
BUILT_PIPELINE_FILES = frozenset(
    {"test_pipeline.py", "test_dvc_contract.py", "test_browser.py", "test_docs.py"}
)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadFileScheduling

    class ByFile(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "built_pipeline" if Path(file).name in BUILT_PIPELINE_FILES else file

    return ByFile(config, log)


# Fixtures that take well over ~10 s (a full `dvc repro`, a benchmark run): every test that uses
# one is `slow`, so `pytest -m "not slow"` never builds them.
SLOW_FIXTURES = frozenset({"built_pipeline", "quick_run"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses `built_pipeline` outside BUILT_PIPELINE_FILES would build it again; a
    test that uses a SLOW_FIXTURES fixture is marked slow."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if SLOW_FIXTURES.intersection(names):
            item.add_marker(pytest.mark.slow)
        uses = "built_pipeline" in names
        if uses and item.path.name not in BUILT_PIPELINE_FILES:
            raise pytest.UsageError(
                f"{item.nodeid} uses built_pipeline: add its file to BUILT_PIPELINE_FILES"
                " in tests/conftest.py"
            )


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
    """A small git+DVC workspace after `dvc repro` of every stage (helpers.repo.build_pipeline):
    the workspace and the environment that runs its code. Every Python process of the repro
    recorded the workspace files it loaded into `ws.parent / "loaded"` (test_pipeline checks them
    against the deps). Built once for the session: copy it (`helpers.repo.copy_workspace`) to
    change it."""
    return build_pipeline(tmp_path_factory.mktemp("built"), mlflow_template_db)


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
                params[section] = merge(params[section], values)
            else:
                params[section] = values
        path = tmp_path / name
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    return write


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template_db: Path) -> Iterator[str]:
    """A real `mlflow server` with a sqlite backend and artifacts in tmp_path, on 127.0.0.1."""
    db = tmp_path / "server.db"
    shutil.copy(mlflow_template_db, db)  # skips the schema migration at server start
    with serve_mlflow(
        f"sqlite:///{db}", tmp_path / "server-artifacts", tmp_path / "server.log"
    ) as uri:
        yield uri
