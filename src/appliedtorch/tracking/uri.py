"""Where runs go: the tracking URI resolved and checked, and its store reachable, before MLflow.

    >>> resolve_tracking_uri("sqlite:///mlflow.db")   # anchored at the repository root
    'sqlite:////work/main/mlflow.db'

A malformed URI, a dead server or a file that is not a database is reported in one line within
seconds; MLflow's own retries take minutes to say the same. Imports no MLflow at module level.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from appliedtorch.core.errors import TrackingError
from appliedtorch.core.redact import redact

SQLITE = "sqlite:///"

# MLflow retries a failing HTTP request 7 times with back-off and waits 120 s for each answer:
# a tracking server answering 500 took 250 s to be reported. A stage prefers failing in seconds
# (set any of these variables to keep MLflow's behaviour).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}

# Schemes MLflow's tracking client accepts (a `+driver` suffix, e.g. postgresql+psycopg, is allowed).
SCHEMES = {"sqlite", "http", "https", "file", "postgresql", "mysql", "mssql"}
SCHEMES |= {"databricks", "databricks-uc", "uc"}

# Database servers MLflow stores runs in, and their default ports.
DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def repo_root(start: str | os.PathLike | None = None) -> Path:
    """The project root: DVC_ROOT when DVC runs the stage, else the nearest directory at or
    above `start` (default: cwd) holding dvc.yaml or .git; `start` itself if there is none.

    `dvc exp run --queue/--temp` runs stages in a temporary copy of the repository but sets
    DVC_ROOT to the real one, so a relative sqlite path still lands in the workspace database.
    """
    return find_repo_root(start) or Path(start or Path.cwd()).resolve()


def root_above(start: str | os.PathLike) -> Path | None:
    """The nearest directory at or above `start` holding dvc.yaml or .git, or None."""
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
        return root_above(start)
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    from appliedtorch.core.params import loaded_from

    starts = [loaded_from(), Path.cwd()]
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0].endswith(".py") else None
    if script is not None and script.parent.name == "stages":
        starts.append(script.parent)
    return next((r for s in starts if s is not None and (r := root_above(s))), None)


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
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        rel = uri[len(SQLITE) :]
        base = Path(root) if root else find_repo_root()
        if base is None:
            where = "MLFLOW_TRACKING_URI" if from_env else "tracking.uri"
            raise TrackingError(
                f"cannot place the tracking database {rel}: no repository root (a directory "
                f"with dvc.yaml or .git) above the params file or {Path.cwd()}; run the stage "
                f"in the repository or set {where} to an absolute sqlite:////path/to/mlflow.db"
            )
        uri = SQLITE + str((base / rel).resolve())
    check_uri(uri)
    uri = move_credentials(uri)
    if from_env:
        os.environ["MLFLOW_TRACKING_URI"] = uri  # subprocesses see it without the password
    return uri


def move_credentials(uri: str) -> str:
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


def sqlite_path(uri: str) -> Path | None:
    """The database file of an `sqlite:///` URI; None for any other store."""
    return Path(uri[len(SQLITE) :]) if uri.startswith(SQLITE) else None


def check_uri(uri: str) -> None:
    """Reject a malformed tracking URI with one line naming it and what is expected.

    Without this a typo fails late and obscurely: `http://host:port5000` ended in a traceback,
    `htp://...` in a model-registry message, and `sqlite://` (in memory) would lose every run.
    """
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:  # e.g. http://[::1:5000: an unclosed or invalid IPv6 address
        raise _malformed(uri, f"is malformed ({str(exc)[:60]})") from None
    scheme = uri_scheme(uri)
    problem = None
    if scheme in ("", "file") and not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
        problem = "is a plain path (MLflow 3 refuses its file store)"
    elif scheme not in SCHEMES and scheme != "":
        problem = f"has an unknown scheme '{parts.scheme}'"
    elif scheme == "sqlite" and not (uri.startswith(SQLITE) and len(uri) > len(SQLITE)):
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
        raise _malformed(uri, problem)


def _malformed(uri: str, problem: str) -> TrackingError:
    where = "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "tracking.uri"
    return TrackingError(
        f"tracking URI '{redact(uri)}' {problem}; set {where} to sqlite:///path/to/mlflow.db or "
        "http(s)://host:port"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of client retries) when an http(s) tracking server is
    down, never answers, or answers its health check with a server error (5xx).

    Sends the credentials MLflow would send (MLFLOW_TRACKING_USERNAME/PASSWORD as basic auth,
    or MLFLOW_TRACKING_TOKEN), so a server behind authentication is not taken for a dead one.
    A sqlite database that is not a database file is refused here too, before MLflow spends
    minutes retrying it.
    """
    if (db := sqlite_path(uri)) is not None:
        check_sqlite_file(db)
    if uri_scheme(uri) in DB_PORTS:
        check_db_server(uri, timeout)
    if not uri.startswith(("http://", "https://")):
        return
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(uri.rstrip("/") + "/health")
    if auth := auth_header():
        request.add_header("Authorization", auth)
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


def auth_header() -> str | None:
    """The Authorization header MLflow would send: basic auth from MLFLOW_TRACKING_USERNAME and
    MLFLOW_TRACKING_PASSWORD, else a bearer MLFLOW_TRACKING_TOKEN, else None."""
    import base64

    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user or password:
        token = base64.b64encode(f"{user or ''}:{password or ''}".encode()).decode()
        return f"Basic {token}"
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    return None


def check_db_server(uri: str, timeout: float = 5.0) -> None:
    """A database server (postgresql, mysql, mssql) that refuses or drops connections is reported
    in seconds: MLflow retries opening it ten times over ~100 s."""
    import socket
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    if not parts.hostname:  # a local socket: the driver reports it
        return
    port = parts.port or DB_PORTS[uri_scheme(uri)]
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
    db = sqlite_path(uri)
    if db is None:
        return
    import mlflow
    from filelock import FileLock

    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{db}.lock", timeout=timeout):
        # Opening the store creates whatever tables are missing; later opens find them all.
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


def open_store(uri: str | None) -> str:
    """The resolved tracking URI of a store that is reachable, with MLflow's retries bounded
    (see `resolve_tracking_uri`, `check_reachable`): call before any MLflow client call."""
    tracking_uri = resolve_tracking_uri(uri)
    check_reachable(tracking_uri)
    bound_store_retries()
    return tracking_uri
