"""MLflow tracking: the only module in appliedtorch that imports mlflow.

One stage execution is one MLflow run:

    with stage_run("math-demos", "math_demos", run_params(p, "math"), p.tracking.uri) as run:
        run.log_metrics({"max_error": 1e-12})
        run.log_artifacts([Path("reports/math/metrics.json")])

The run carries the lineage tags of the tracking contract (git.commit, git.dirty, dvc.stage,
dvc.exp_name, and `sweep` for a named grid of queued experiments) and ends FAILED if the block
raises. A run whose tags name a dataset (`data.<name>.md5`) also logs that dataset's train and
test splits as MLflow dataset inputs; `system_metrics=True` records CPU, memory (and GPU) use.
Every experiment is tagged as a model-training experiment (`mlflow.experimentKind`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from appliedtorch.core.errors import AppliedTorchError, TrackingError
from appliedtorch.core.utils import file_md5, first_line, json_md5, signals_held

log = logging.getLogger(__name__)


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The project root: DVC_ROOT when DVC runs the stage, else the nearest directory at or
    above `start` (default: cwd) holding dvc.yaml or .git; `start` itself if there is none.

    `dvc exp run --queue/--temp` runs stages in a temporary copy of the repository but sets
    DVC_ROOT to the real one, so a relative sqlite path still lands in the workspace database.
    """
    return find_repo_root(start) or Path(start or Path.cwd()).resolve()


def _root_above(start: str | os.PathLike) -> Path | None:
    here = Path(start).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists() or (d / ".git").exists():
            return d
    return None


def find_repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """The project root or None: DVC_ROOT, else the root above `start`; without `start`, the
    root above the params file this process loaded, the cwd, or the stage script, in that order.

    The params file comes first: `python /repo/stages/pinn.py --params /repo/params.yaml` run
    from elsewhere must use /repo's tracking database, not start a new one in the cwd.
    """
    if start is not None:
        return _root_above(start)
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    from appliedtorch.core.params import loaded_from

    starts = [loaded_from(), Path.cwd()]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else None
    if script is not None and script.parent.name == "stages":
        starts.append(script.parent)
    return next((r for s in starts if s is not None and (r := _root_above(s))), None)


def redact(text: str) -> str:
    """`scheme://user:***@host`: a password in any URI in `text` is replaced by ***."""
    return _CREDENTIALS.sub(r"\1:***@", text)


_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*):[^/@\s]*@")

# MLflow retries a failing HTTP request 7 times with back-off and waits 120 s for each answer:
# a tracking server answering 500 took 250 s to be reported. A stage prefers failing in seconds
# (set any of these variables to keep MLflow's behaviour).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


def resolve_tracking_uri(uri: str | None, root: str | os.PathLike | None = None) -> str:
    """MLFLOW_TRACKING_URI wins; else `uri`, with a relative sqlite path anchored at `root`
    (default: the repository root, see `find_repo_root`).

    Credentials in an http(s) URI (`http://user:pw@host`) move to MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD for this process, where MLflow (and `check_reachable`) read them:
    the URI returned, logged and shown carries none. MLflow's HTTP retries are cut to seconds.
    """
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from_env = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    uri = os.environ.get("MLFLOW_TRACKING_URI") or uri or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        rel = uri[len(prefix) :]
        base = Path(root) if root else find_repo_root()
        if base is None:
            where = "MLFLOW_TRACKING_URI" if from_env else "tracking.uri"
            raise TrackingError(
                f"cannot place the tracking database {rel}: no repository root (a directory "
                f"with dvc.yaml or .git) above the params file or {Path.cwd()}; run the stage "
                f"in the repository or set {where} to an absolute sqlite:////path/to/mlflow.db"
            )
        uri = prefix + str((base / rel).resolve())
    check_uri(uri)
    uri = _move_credentials(uri)
    if from_env:
        os.environ["MLFLOW_TRACKING_URI"] = uri  # subprocesses see it without the password
    return uri


def _move_credentials(uri: str) -> str:
    """Strip `user:pw@` from an http(s) URI into MLflow's basic-auth variables."""
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri
    if parts.username is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username)
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password)
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def uri_scheme(uri: str) -> str:
    """A tracking URI's scheme without its driver, lowercase: `postgresql+psycopg://` -> `postgresql`."""
    import urllib.parse

    return urllib.parse.urlsplit(uri).scheme.split("+", 1)[0].lower()


# Schemes MLflow's tracking client accepts (a `+driver` suffix, e.g. postgresql+psycopg, is allowed).
_SCHEMES = {"sqlite", "http", "https", "file", "postgresql", "mysql", "mssql"}
_SCHEMES |= {"databricks", "databricks-uc", "uc"}


def check_uri(uri: str) -> None:
    """Reject a malformed tracking URI with one line naming it and what is expected.

    Without this a typo fails late and obscurely: `http://host:port5000` ended in a traceback,
    `htp://...` in a model-registry message, and `sqlite://` (in memory) would lose every run.
    """
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    scheme = uri_scheme(uri)
    problem = None
    if scheme in ("", "file") and not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
        problem = "is a plain path (MLflow 3 refuses its file store)"
    elif scheme not in _SCHEMES and scheme != "":
        problem = f"has an unknown scheme '{parts.scheme}'"
    elif scheme == "sqlite" and not (uri.startswith("sqlite:///") and len(uri) > 10):
        problem = "is not sqlite:///<path to the database file>"
    elif scheme in ("http", "https"):
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            problem = "has an invalid port"
        else:
            if not parts.hostname:
                problem = "has no host"
    if problem:
        where = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
        raise TrackingError(
            f"tracking URI '{redact(uri)}' {problem}; set {where} to sqlite:///path/to/mlflow.db or "
            "http(s)://host:port"
        )


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def lineage_tags(stage: str, root: Path) -> dict[str, str]:
    """Tags that tie a run to its code: git commit and dirtiness, DVC stage and experiment."""
    tags = {"dvc.stage": stage}
    commit = _git(root, "rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        status = _git(root, "status", "--porcelain", "--untracked-files=no")
        tags["git.dirty"] = str(bool(status)).lower()
    for env, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline"),
    ):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    if sweep := sweep_name(os.environ.get("DVC_EXP_NAME")):
        tags["sweep"] = sweep
    if variant := variant_name(os.environ.get("DVC_EXP_NAME")):
        tags["variant"] = variant
    return tags


def sweep_name(exp_name: str | None) -> str | None:
    """The sweep a queued experiment belongs to: `lr-grid` for `lr-grid-2` or for
    `lr-grid.recipe` (`python -m appliedtorch.recipes compare`), else None.

    `dvc exp run --queue -n lr-grid -S 'mlp.lr=choice(...)'` names the grid's experiments
    `lr-grid-1`, `lr-grid-2`, ... (DVC refuses a name already used on the same baseline), so the
    prefix names exactly that batch. DVC passes nothing else that tells one batch from another:
    a grid queued without `-n` gets random names and no sweep tag (and a lone experiment named
    like `model-2` is tagged `sweep=model`).
    """
    match = re.fullmatch(r"(.+)-(\d+)", exp_name or "")
    if match:
        return match.group(1)
    match = _VARIANT.fullmatch(exp_name or "")
    return match.group(1) if match else None


def variant_name(exp_name: str | None) -> str | None:
    """The variant of a comparison sweep: `recipe` for `cnn-fast-cmp.recipe`, else None."""
    match = _VARIANT.fullmatch(exp_name or "")
    return match.group(2) if match else None


# `<sweep>.<variant>`, the variant a params key's name (lowercase, not a number: `lr-0.01` is
# no variant `01`).
_VARIANT = re.compile(r"(.+)\.([a-z_][a-z0-9_]*)")


def dvc_md5(path: str | os.PathLike, known: Mapping[str, str] | None = None) -> str:
    """The hash DVC records in dvc.lock for `path`: a file's md5, or a directory's `<md5>.dir`.

    A directory's hash is the md5 of the JSON list of {"md5", "relpath"} entries sorted by
    relpath, as dvc-data computes it, so a run's tag can be matched against dvc.lock. `known`
    holds md5s already computed ({relpath: md5}, e.g. by the dataset's check on loading).
    """
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    known = known or {}
    entries = []
    for f in sorted(path.rglob("*")):
        if f.is_file():
            rel = f.relative_to(path).as_posix()
            entries.append({"md5": known.get(rel) or file_md5(f), "relpath": rel})
    entries.sort(key=lambda e: e["relpath"])
    blob = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(blob).hexdigest() + ".dir"


def data_tags(
    name: str, path: str | os.PathLike, source: str, known: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Tags naming the exact data a run read: `data.<name>.md5` (DVC's hash) and `data.source`;
    `known` as in `dvc_md5`."""
    return {f"data.{name}.md5": dvc_md5(path, known), "data.source": source}


# Dataset inputs: each dataset a run's tags name (`data.<name>.md5`) is logged as two splits.
SPLITS = (("train", "training"), ("test", "testing"))


def dataset_inputs(tags: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """(name, digest, source, context) of every split a run read, from its `data.*` tags:
    `("mnist-train", <DVC md5 of data/raw/mnist>, "synthetic", "training")`, ..."""
    source = str(tags.get("data.source", ""))
    out = []
    for key, md5 in tags.items():
        match = re.fullmatch(r"data\.(.+)\.md5", key)
        if match:
            out += [(f"{match.group(1)}-{split}", str(md5), source, ctx) for split, ctx in SPLITS]
    return out


def params_md5(params: Mapping[str, Any]) -> str:
    """A stable hash of the params a run used (canonical JSON)."""
    return json_md5(dict(params))


def _database_writes(tracking_uri: str) -> contextlib.AbstractContextManager[None]:
    """Around MLflow calls on a database store (sqlite, PostgreSQL, ...): SIGINT and SIGTERM wait
    until the call returns. A KeyboardInterrupt raised inside its transaction left the connection
    holding sqlite's write lock, so ending the run KILLED then failed with 'database is locked'
    and the run stayed RUNNING. Over HTTP an interrupted request is harmless and not delayed."""
    database = uri_scheme(tracking_uri) in {"sqlite", *_DB_PORTS}
    return signals_held() if database else contextlib.nullcontext()


def _uninterrupted(method: Any) -> Any:
    """A StageRun method whose MLflow writes a signal does not cut in half (`_database_writes`)."""

    @functools.wraps(method)
    def wrapper(self: StageRun, *args: Any, **kwargs: Any) -> Any:
        with _database_writes(self._tracking_uri):
            return method(self, *args, **kwargs)

    return wrapper


class StageRun:
    """Handle on the active MLflow run, passed to the stage body."""

    def __init__(self, mlflow_module: Any, run: Any, tracking_uri: str = ""):
        self._mlflow = mlflow_module
        self.run = run
        self.run_id: str = run.info.run_id
        self._tracking_uri = tracking_uri

    @_uninterrupted
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log finite numeric metrics (non-numbers are skipped) under their own names; a character
        MLflow refuses in a name (e.g. in a class name) becomes `_`."""
        clean = {
            re.sub(r"[^A-Za-z0-9_. /:-]", "_", k): float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if clean:
            self._mlflow.log_metrics(clean, step=step)

    @_uninterrupted
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @_uninterrupted
    def log_datasets(self, inputs: Sequence[tuple[str, str, str, str]]) -> None:
        """Log (name, digest, source, context) datasets as the run's inputs (see `dataset_inputs`).

        The digest is DVC's md5 of the data directory, so a run can be matched with `dvc.lock`
        and found with `search_runs(filter_string="dataset.digest = '<md5>'")`.
        """
        from mlflow.data.meta_dataset import MetaDataset

        for name, digest, source, context in inputs:
            dataset = MetaDataset(_dvc_dataset_source()(source), name=name, digest=digest)
            self._mlflow.log_input(dataset, context=context)

    @_uninterrupted
    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        """Log report files (directories are logged recursively); missing paths are skipped."""
        for p in map(Path, paths):
            if p.is_dir():
                self._mlflow.log_artifacts(str(p), artifact_path=artifact_path)
            elif p.exists():
                self._mlflow.log_artifact(str(p), artifact_path=artifact_path)

    @_uninterrupted
    def log_model(
        self, model: Any, name: str, input_example: Any, metadata: Mapping[str, Any] | None = None
    ) -> Any:
        """Log a torch model with a signature inferred from `input_example` (a numpy array).

        The signature is the example's dtype and shape and the model's output on it, with a free
        batch size: for a classifier, uint8 pixels (-1, C, H, W) in, float32 probabilities
        (-1, K) out, so `mlflow models serve` takes an image's pixels as they are. `metadata`
        (class names, input shape, ...) is stored with the model so that `predict` can use a
        registered model on its own.
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model_cpu = model.to("cpu").eval()
        with torch.inference_mode():
            out = model_cpu(torch.as_tensor(input_example)).numpy()
        signature = infer_signature(input_example, out)
        # Name the requirements instead of letting MLflow infer them: inference imports the model
        # in a subprocess and costs 10-20 s per run. The local build tag (+cu130) is dropped so
        # the pin resolves from PyPI.
        torch_version = torch.__version__.split("+")[0]
        # The model is exported (torch.export, MLflow's default format) on the CPU, and an exported
        # program cannot move to another device. MLflow loads a pyfunc model onto CUDA whenever a
        # GPU is present, so on a GPU machine its check of the serving example failed (seen on an
        # H200): load it on the CPU there, unless the user chose a device. Serving on a GPU
        # machine needs the same variable (README); these classifiers are small for a GPU anyway.
        if torch.cuda.is_available():
            os.environ.setdefault("MLFLOW_DEFAULT_PREDICTION_DEVICE", "cpu")
        return mlflow.pytorch.log_model(
            model_cpu,
            name=name,
            signature=signature,
            input_example=input_example,
            pip_requirements=[f"torch=={torch_version}", f"mlflow=={mlflow.__version__}"],
            metadata=dict(metadata or {}),
        )

    @_uninterrupted
    def register_model(self, model_info: Any, name: str, test_accuracy: float) -> dict[str, Any]:
        """Register the logged model as a new version of `name`; move alias `champion` to it
        when it beats the current champion (see `should_promote`). Returns what was done."""
        client = self._mlflow.MlflowClient()
        tags = self.run.data.tags | client.get_run(self.run_id).data.tags
        data_hash = next(
            (v for k, v in tags.items() if k.startswith("data.") and k.endswith(".md5")), ""
        )
        version_tags = {
            "test_accuracy": repr(float(test_accuracy)),
            "data.md5": data_hash,
            "data.source": tags.get("data.source", ""),
            "run_id": self.run_id,
        }
        mv = self._mlflow.register_model(model_info.model_uri, name, tags=version_tags)
        champion = None
        with contextlib.suppress(self._mlflow.exceptions.MlflowException):
            champion = client.get_model_version_by_alias(name, CHAMPION)
        promote, why = should_promote(version_tags, champion.tags if champion else None)
        if promote:
            client.set_registered_model_alias(name, CHAMPION, mv.version)
        log.info("registered %s version %s; %s", name, mv.version, why)
        result = {
            "registry.name": name,
            "registry.version": mv.version,
            "registry.champion": promote,
        }
        self.set_tags(result | {"registry.decision": why})
        return result


CHAMPION = "champion"


@functools.cache
def _dvc_dataset_source() -> type:
    """An mlflow DatasetSource for data DVC fetched (built on first use: mlflow loads lazily)."""
    from mlflow.data.dataset_source import DatasetSource

    class DVCDatasetSource(DatasetSource):
        """Where the download stage fetched the data: `data.source` (upstream, synthetic, a mirror)."""

        def __init__(self, uri: str):
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self) -> str:
            return self.uri

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> DatasetSource:
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, Any]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> DatasetSource:
            return cls(source_dict["uri"])

    return DVCDatasetSource


def should_promote(new: Mapping[str, str], champion: Mapping[str, str] | None) -> tuple[bool, str]:
    """Whether a new model version takes the `champion` alias, and why.

    Test accuracies are only comparable on the same test data (same `data.md5`). A model trained
    on real data replaces a champion trained on synthetic data; other cross-data cases keep the
    champion (move the alias by hand if that is wanted).
    """
    if champion is None:
        return True, "first version: champion"
    acc, champ_acc = float(new["test_accuracy"]), float(champion.get("test_accuracy", "-inf"))
    if new.get("data.md5") == champion.get("data.md5"):
        if acc > champ_acc:
            return True, f"test accuracy {acc:.4f} beats champion's {champ_acc:.4f}: champion"
        return False, f"test accuracy {acc:.4f} does not beat champion's {champ_acc:.4f}"
    if champion.get("data.source") == "synthetic" and new.get("data.source") != "synthetic":
        return True, "first model on real data replaces a synthetic-data champion"
    return False, "champion was evaluated on other data; accuracies not comparable, alias kept"


def load_logged_model(uri: str, check: Any = None) -> tuple[Any, dict[str, Any]]:
    """Load a logged model (`models:/name@alias`, `runs:/<id>/model`, `models:/m-...`) and its
    metadata; a one-line TrackingError when it cannot be found. `check(metadata)` runs before
    the model is loaded (it raises to refuse it)."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(resolve_tracking_uri(None))
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as exc:  # noqa: BLE001 - unknown name, alias, run or a broken store
        raise TrackingError(
            f"model '{uri}' not found or not loadable: {_first_line(exc)}"
        ) from None
    if check is not None:
        check(dict(info.metadata or {}))
    try:
        model = mlflow.pytorch.load_model(uri)  # logged from the CPU (portable_model)
    except Exception as exc:  # noqa: BLE001 - unknown name, alias, run or a broken store
        raise TrackingError(
            f"model '{uri}' not found or not loadable: {_first_line(exc)}"
        ) from None
    return model, dict(info.metadata or {})


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of client retries) when an http(s) tracking server is
    down, never answers, or answers its health check with a server error (5xx).

    Sends the credentials MLflow would send (MLFLOW_TRACKING_USERNAME/PASSWORD as basic auth,
    or MLFLOW_TRACKING_TOKEN), so a server behind authentication is not taken for a dead one.
    A sqlite database that is not a database file is refused here too, before MLflow spends
    minutes retrying it.
    """
    if uri.startswith("sqlite:///"):
        check_sqlite_file(Path(uri[len("sqlite:///") :]))
    if uri_scheme(uri) in _DB_PORTS:
        check_db_server(uri, timeout)
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(uri.rstrip("/") + "/health")
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    shown = redact(uri)
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:  # MLflow would retry this for minutes
            raise TrackingError(
                f"MLflow tracking server {shown} answers HTTP {exc.code} ({exc.reason}); check "
                "the server's log, fix tracking.uri in params.yaml, or unset MLFLOW_TRACKING_URI"
            ) from None
        # Else the server answered; auth or routing problems surface with their own message.
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = redact(str(getattr(exc, "reason", exc)))
        raise TrackingError(
            f"MLflow tracking server {shown} is not reachable ({reason}); start it, fix "
            "tracking.uri in params.yaml, or unset MLFLOW_TRACKING_URI"
        ) from None


_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def check_db_server(uri: str, timeout: float = 5.0) -> None:
    """A database server (postgresql, mysql, mssql) that refuses or drops connections is reported
    in seconds: MLflow retries opening it ten times over ~100 s."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:  # a local socket: the driver reports it
        return
    port = parts.port or _DB_PORTS[uri_scheme(uri)]
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise TrackingError(
            f"tracking database server {redact(uri)} is not reachable ({reason}); start it, fix "
            "tracking.uri in params.yaml, or unset MLFLOW_TRACKING_URI"
        ) from None


def bound_store_retries() -> None:
    """MLflow retries opening a database 10 times with doubling sleeps (~100 s) before it
    reports anything; 3 attempts (0.4 s of sleep) are plenty for a database that works."""
    import mlflow.store.db.utils as db_utils

    db_utils.MAX_RETRY_COUNT = min(getattr(db_utils, "MAX_RETRY_COUNT", 3), 3)


def check_sqlite_file(db: Path) -> None:
    """A tracking database that exists must be an sqlite file (MLflow retries a directory for
    ~100 s); one that does not exist yet is created by MLflow."""
    if not db.exists():
        return
    fix = "move it away or set tracking.uri (or MLFLOW_TRACKING_URI) to another database"
    if not db.is_file():
        raise TrackingError(f"tracking database {db} is a directory, not an sqlite file; {fix}")
    try:
        with db.open("rb") as f:
            header = f.read(16)
    except OSError as exc:
        raise TrackingError(f"cannot read tracking database {db}: {exc.strerror}") from None
    if header and header != b"SQLite format 3\0":
        raise TrackingError(f"tracking database {db} is not an sqlite database (damaged?); {fix}")


def ensure_schema(uri: str, timeout: float = 600.0) -> None:
    """Create a new sqlite tracking database's schema once, under an inter-process file lock.

    MLflow creates its tables (and runs its migrations) on first use without a lock: two stages
    or two queued experiments starting on a workspace with no mlflow.db race in the migrations
    (`duplicate column name: step`). The lock file `<db>.lock` sits beside the database, so every
    process that opens that database takes the same lock, whatever directory it runs in (queued
    experiments run in temporary copies). A server or postgresql store manages its own schema.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return
    import mlflow
    from filelock import FileLock

    db = Path(uri[len(prefix) :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=timeout):
        # Opening the store creates whatever tables are missing; later opens find them all.
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


# MLflow's per-experiment kind: its UI's "create experiment" dialog sets this tag, and a UI that
# routes by kind opens model-training experiments on their runs table and charts, GenAI ones on a
# traces overview. MLflow 3.17's UI routes by its global GenAI / Model training switch instead
# (default GenAI), so links also carry `?workflowType=machine_learning` (README, report).
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: MODEL_TRAINING}

# Seconds between system-metric samples: MLflow's default (10 s) records nothing for a run that
# ends sooner, and one sample a second costs nothing next to training.
SYSTEM_METRICS_INTERVAL = 1.0


def mark_model_training(client: Any, experiment: Any) -> None:
    """Tag `experiment` as model training unless a kind is already set (by a person, in the UI)."""
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


@contextlib.contextmanager
def stage_run(
    experiment: str,
    stage: str,
    params: Mapping[str, Any],
    uri: str | None = None,
    tags: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """Start one MLflow run for one stage execution; end it FINISHED, or FAILED if the block raises.

    `resume_run_id` (from a resume state) continues that run, tagged `resumed: true`;
    if it cannot be reopened (e.g. another tracking store), a new run links to it with the tag
    `resumed_from`. `system_metrics` samples CPU, memory, disk, network (and GPU) use into
    `system/*` metrics every SYSTEM_METRICS_INTERVAL seconds (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL
    wins). Datasets named by `data.<name>.md5` tags are logged as inputs (`dataset_inputs`).
    """
    root = repo_root()
    tracking_uri = resolve_tracking_uri(uri)  # anchored at the params file's repository
    check_reachable(tracking_uri)
    import mlflow  # after the checks: importing it takes seconds that a dead server should not

    bound_store_retries()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with _database_writes(tracking_uri):
            ensure_schema(tracking_uri)
            _open_experiment(mlflow, experiment, tracking_uri)
            if system_metrics and not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
                mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL)
            active, resume_tags = _start_run(mlflow, stage, resume_run_id, system_metrics)
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported the same way
        raise TrackingError(
            f"cannot use MLflow tracking at {redact(tracking_uri)}: {_first_line(exc)}"
        ) from None
    run = StageRun(mlflow, active, tracking_uri)
    try:
        run.set_tags(
            lineage_tags(stage, root)
            | {"params.md5": params_md5(params)}
            | dict(tags or {})
            | resume_tags
        )
        with _database_writes(tracking_uri):
            mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})
        run.log_datasets(dataset_inputs(dict(tags or {})))
        log.info("MLflow run %s in experiment '%s' at %s", run.run_id, experiment, tracking_uri)
        yield run
    except BaseException as exc:
        with _database_writes(tracking_uri):
            _end_failed(mlflow, run, exc, tracking_uri)
        raise
    else:
        with _database_writes(tracking_uri):
            not_ended = _end_run(mlflow, "FINISHED")
        if not_ended:
            raise TrackingError(
                f"cannot end MLflow run {run.run_id} at {redact(tracking_uri)}: {not_ended}; "
                "it stays RUNNING (the stage's outputs are written)"
            )


def _open_experiment(mlflow: Any, experiment: str, tracking_uri: str) -> None:
    """Create `experiment` if needed (artifacts beside an sqlite database), make it active and
    mark it as a model-training experiment."""
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if tracking_uri.startswith("sqlite:"):
            # Keep artifacts beside the database, not wherever the stage happened to run.
            db = Path(tracking_uri.removeprefix("sqlite:///"))
            location = (db.parent / "mlartifacts" / experiment).as_uri()
        # Another stage may create it concurrently: then it already exists, which is fine.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
    exp = mlflow.set_experiment(experiment)
    mark_model_training(mlflow.MlflowClient(), exp)


def _start_run(
    mlflow: Any, stage: str, resume_run_id: str | None, system_metrics: bool
) -> tuple[Any, dict[str, str]]:
    """The active run: `resume_run_id` reopened (tag `resumed`), or a new one, linked to the run
    it could not reopen (tag `resumed_from`). Named `<stage>@<dvc exp name>` under `dvc exp`."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    run_name = f"{stage}@{exp_name}" if exp_name else f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    active = _reopen_run(mlflow, resume_run_id, system_metrics) if resume_run_id else None
    if active is not None:
        return active, {"resumed": "true"}
    active = mlflow.start_run(run_name=run_name, log_system_metrics=system_metrics)
    return active, ({"resumed_from": resume_run_id} if resume_run_id else {})


def _end_failed(mlflow: Any, run: StageRun, exc: BaseException, tracking_uri: str) -> None:
    """End the run KILLED (a signal) or FAILED as the stage's block raised `exc`. A failure inside
    MLflow itself becomes one TrackingError line; a run that cannot be ended is said so."""
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    not_ended = _end_run(mlflow, status)
    ended = f"the run ended {status}"
    if not_ended:
        ended = f"the run could not be ended ({not_ended}) and stays RUNNING"
    if _raised_in_mlflow(exc) and not isinstance(exc, KeyboardInterrupt):
        raise TrackingError(
            f"MLflow tracking at {redact(tracking_uri)} failed during run {run.run_id}: "
            f"{_first_line(exc)}; {ended}"
        ) from None
    if not_ended and isinstance(exc, AppliedTorchError):
        exc.args = (f"{exc}; MLflow: {ended}",)  # still one line
    elif not_ended:  # a signal or a bug: its own error line follows this one
        log.warning("MLflow run %s: %s", run.run_id, ended)


def _first_line(exc: BaseException) -> str:
    """An exception's first telling line (core.utils.first_line), passwords redacted."""
    return redact(first_line(exc)[:300])


def _end_run(mlflow: Any, status: str) -> str | None:
    """End the active run with `status`; None, or what stopped it (the store is unwritable)."""
    try:
        mlflow.end_run(status=status)
    except Exception as exc:  # noqa: BLE001 - any backend failure: the caller reports one line
        return _first_line(exc)
    return None


def _raised_in_mlflow(exc: BaseException) -> bool:
    """Whether `exc` came out of MLflow's code (a store or server failing mid-run), not the
    stage's own work."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("mlflow."):
            return True
        tb = tb.tb_next
    return False


def _reopen_run(mlflow: Any, run_id: str, system_metrics: bool = False) -> Any:
    """Continue an interrupted run; None (with a warning) if this store does not have it."""
    try:
        return mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    except mlflow.exceptions.MlflowException as exc:
        log.warning(
            "cannot continue MLflow run %s (%s); starting a new one", run_id, first_line(exc)
        )
        return None


def _newest_finished(client: Any, experiment_id: str, want: Mapping[str, str]) -> tuple[Any, bool]:
    """The newest FINISHED run carrying the tags `want` (matched), else the newest FINISHED one."""
    finished = "attributes.status = 'FINISHED'"
    tagged = "".join(f" and tags.`{k}` = '{v}'" for k, v in want.items())
    for filter_string in (finished + tagged, finished) if want else (finished,):
        runs = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0], filter_string != finished or not want
    return None, False


def latest_runs(
    experiments: Sequence[str],
    uri: str | None = None,
    prefer_tags: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The newest FINISHED run of each experiment, as plain dicts (for the report).

    `prefer_tags[experiment]` picks the newest run carrying those tags (e.g. the workspace's
    `params.md5`, so a queued sweep's later runs don't stand in for the workspace's results);
    with none matching, the newest run is returned with `matched: False`. Experiments without
    runs are left out. A sqlite database that does not exist yet gives `{}` (nothing is created).
    """
    import mlflow

    tracking_uri = resolve_tracking_uri(uri)
    if (
        tracking_uri.startswith("sqlite:///")
        and not Path(tracking_uri[len("sqlite:///") :]).exists()
    ):
        return {}
    check_reachable(tracking_uri)
    bound_store_retries()
    out: dict[str, dict[str, Any]] = {}
    try:
        client = mlflow.MlflowClient(tracking_uri)
        for name in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                continue
            want = dict((prefer_tags or {}).get(name, {}))
            run, matched = _newest_finished(client, exp.experiment_id, want)
            if run is None:
                continue
            out[name] = {
                "experiment": name,
                "experiment_id": exp.experiment_id,
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "start_time": run.info.start_time,
                "matched": matched,
                "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            }
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported the same way
        raise TrackingError(
            f"cannot read MLflow runs at {redact(tracking_uri)}: {_first_line(exc)}"
        ) from None
    return out
