"""The tracking store failing, at the start or mid-run, and tracking URIs with credentials.

Each case: one `error:` line (or, for the report, a warning and a page), the exit code, no
traceback, the previous outputs byte-identical, no temporary file, the MLflow run's final
status, and the time to fail (printed; `pytest -s` shows it). The stages run in this process
(`run_stage` and all) except where a real process is the point.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import logging
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import yaml

from appliedtorch import tracking
from appliedtorch.core.cli import _redact_record
from appliedtorch.core.errors import TrackingError
from helpers import PYTHON, REPO, merge
from helpers.servers import free_port, serve_mlflow, silent_server
from helpers.stage_runs import leftovers, one_error_line, run_stage_here, run_statuses, tmpfs

TINY = {"device": "cpu", "math": {"gd_steps": 50}}
PREVIOUS = {
    "reports/math/metrics.json": b'{"previous": 1}\n',
    "reports/math/gradient_descent.png": b"previous picture",
    "reports/math/fft_spectrum.png": b"previous spectrum",
}
MATH = ["--reports", "reports/math"]
SECRET = "s3cr%40t"  # percent-encoded '@' in the password: decoded before it is sent


@pytest.fixture
def ws(tmp_path: Path, mlflow_template_db: Path, monkeypatch) -> Iterator[Path]:
    """A workspace (no dvc.yaml: not a repository) after a good math_demos run; cwd."""
    ws = tmp_path / "ws"
    ws.mkdir()
    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for rel, content in PREVIOUS.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(content)
    shutil.copy(mlflow_template_db, ws / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ws / 'mlflow.db'}")
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", *tracking.HTTP_DEFAULTS):
        monkeypatch.delenv(var, raising=False)  # resolve_tracking_uri sets them: restore after
    monkeypatch.chdir(ws)
    yield ws
    mlflow.set_tracking_uri(None)


def unchanged(ws: Path) -> None:
    assert {k: (ws / k).read_bytes() for k in PREVIOUS} == PREVIOUS
    assert not leftovers(ws)


def timed(fn: Callable[[], tuple[int, str]], label: str) -> tuple[int, str, float]:
    start = time.monotonic()
    code, err = fn()
    took = time.monotonic() - start
    print(f"{label}: reported after {took:.1f} s")
    return code, err, took


# ---- servers that fail ---------------------------------------------------------------------------


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def answer(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Always500(Quiet):
    def do_GET(self) -> None:
        self.answer(500)

    do_POST = do_GET


class HealthyButFailing(Quiet):
    """/health says OK; every API call answers 500 (what MLflow retried for minutes)."""

    def do_GET(self) -> None:
        self.answer(200, b"OK") if self.path == "/health" else self.answer(500)

    do_POST = do_GET


def test_server_answering_500_is_one_line_within_seconds(ws, monkeypatch, capsys):
    with http_server(Always500) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        code, err, took = timed(lambda: run_stage_here("math_demos", MATH, monkeypatch, capsys),
                                "HTTP 500 on /health")  # fmt: skip
    line = one_error_line(err)
    assert code == 1 and took < 30
    assert line.startswith(f"error: MLflow tracking server {uri} answers HTTP 500 ")
    unchanged(ws)


def test_api_answering_500_is_one_line_within_30_s(ws, monkeypatch, capsys):
    """MLflow's own retries (7, with back-off, 120 s each) are cut to 2 x 8 s by default."""
    with http_server(HealthyButFailing) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        code, err, took = timed(lambda: run_stage_here("math_demos", MATH, monkeypatch, capsys),
                                "HTTP 500 on every API call")  # fmt: skip
    line = one_error_line(err)
    assert code == 1 and took < 30
    assert re.match(rf"error: cannot use MLflow tracking at {uri}: .*500", line), line
    unchanged(ws)


def test_silent_server_is_one_line_within_30_s(ws, monkeypatch, capsys):
    """Accepts connections, never answers (a hung server, a firewall that drops)."""
    with silent_server() as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        code, err, took = timed(lambda: run_stage_here("math_demos", MATH, monkeypatch, capsys),
                                "silent server")  # fmt: skip
    assert one_error_line(err) == (
        f"error: MLflow tracking server {uri} is not reachable (timed out); start it, fix "
        "tracking.uri in params.yaml, or unset MLFLOW_TRACKING_URI"
    )
    assert code == 1 and took < 30
    unchanged(ws)


# ---- the database itself -------------------------------------------------------------------------


def as_directory(db: Path) -> None:
    db.unlink()
    (db / "x").mkdir(parents=True)


def garbage(db: Path) -> None:
    db.write_bytes(b"not a database\n" * 300)


@pytest.mark.parametrize(("damage", "problem"), [
    (as_directory, "is a directory, not an sqlite file"),
    (garbage, r"is not an sqlite database \(damaged\?\)"),
])  # fmt: skip
def test_unusable_database_is_one_line_at_once(damage, problem, ws, monkeypatch, capsys):
    """A directory took MLflow 107 s of retries before its traceback."""
    damage(ws / "mlflow.db")
    code, err, took = timed(lambda: run_stage_here("math_demos", MATH, monkeypatch, capsys),
                            damage.__name__)  # fmt: skip
    assert re.fullmatch(
        rf"error: tracking database {ws}/mlflow\.db {problem}; move it away or set tracking\.uri "
        r"\(or MLFLOW_TRACKING_URI\) to another database",
        one_error_line(err),
    )
    assert code == 1 and took < 5
    unchanged(ws)


@pytest.mark.parametrize("damage", [as_directory, garbage])
def test_report_with_an_unusable_database_warns_and_writes_the_page(
    damage, ws, monkeypatch, capsys
):
    """Decision: the report's numbers and pictures come from files, not MLflow; it warns and
    renders the page without run ids, naming the problem, as for an unreachable server."""
    damage(ws / "mlflow.db")
    args = ["--reports", "reports", "--out", "reports/index.html"]
    monkeypatch.setattr(sys, "argv", ["report.py", "--params", "params.yaml", *args])
    caplog_records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = caplog_records.append  # type: ignore[method-assign]
    logging.getLogger("report").addHandler(handler)
    try:
        start = time.monotonic()
        runpy.run_path(str(REPO / "stages/report.py"), run_name="__main__")  # no SystemExit
        print(f"report with {damage.__name__}: {time.monotonic() - start:.1f} s")
    finally:
        logging.getLogger("report").removeHandler(handler)
    assert "Traceback" not in capsys.readouterr().err
    (warning,) = [r.getMessage() for r in caplog_records if r.levelno == logging.WARNING]
    assert warning.startswith(f"tracking database {ws}/mlflow.db is ")
    page = (ws / "reports/index.html").read_text()
    assert "MLflow run ids unavailable: tracking database" in page
    unchanged(ws)


# ---- the store failing mid-run -------------------------------------------------------------------


def fill_after(monkeypatch, disk: Path) -> None:
    """Fill `disk` once the demos have run (inside the MLflow run, before anything is logged)."""
    from appliedtorch.demos import checks

    real = checks.run_all

    def run_all(*args, **kwargs):
        results = real(*args, **kwargs)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=64k"],
                       capture_output=True, check=False)  # fmt: skip
        return results

    monkeypatch.setattr(checks, "run_all", run_all)


def test_tracking_disk_full_mid_run_is_one_line(ws, tmp_path, mlflow_template_db, monkeypatch,
                                                capsys):  # fmt: skip
    """Before: 13 tracebacks and a RUNNING run. The run cannot be ended on a full store (sqlite
    needs space to write its status), so the line says it stays RUNNING."""
    with tmpfs(tmp_path / "store", "4m") as store:
        shutil.copy(mlflow_template_db, store / "mlflow.db")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
        fill_after(monkeypatch, store)
        code, err, took = timed(lambda: run_stage_here("math_demos", MATH, monkeypatch, capsys),
                                "tracking disk full mid-run")  # fmt: skip
        line = one_error_line(err)
        assert code == 1
        assert re.fullmatch(
            rf"error: MLflow tracking at sqlite:///{store}/mlflow\.db failed during run \w+: "
            r"\(sqlite3\.OperationalError\) database or disk is full; the run could not be ended "
            r"\(.*\) and stays RUNNING",
            line,
        ), line
        unchanged(ws)
        (store / "filler").unlink()
        client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("math-demos").experiment_id])
        assert run.info.status == "RUNNING"
        mlflow.set_tracking_uri(None)


def test_artifact_store_failing_mid_run_ends_the_run_failed(ws, monkeypatch, capsys):
    """The database still works: the run is ended FAILED, and the line says so."""
    (ws / "mlartifacts").write_text("a file where MLflow puts artifacts\n")
    code, err, _ = timed(lambda: run_stage_here("math_demos", MATH, monkeypatch, capsys),
                         "artifact store unwritable")  # fmt: skip
    line = one_error_line(err)
    assert code == 1
    assert re.fullmatch(
        rf"error: MLflow tracking at sqlite:///{ws}/mlflow\.db failed during run \w+: .*"
        r"; the run ended FAILED",
        line,
    ), line
    unchanged(ws)
    assert run_statuses(ws, "math-demos") == ["FAILED"]


# ---- credentials ------------------------------------------------------------------------------


def test_redact_hides_passwords_in_any_uri():
    text = "at postgresql://u:pw@db:5432/x and http://alice:s3cr%40t@h:5000/ or sqlite:///a@b.db"
    assert tracking.redact(text) == (
        "at postgresql://u:***@db:5432/x and http://alice:***@h:5000/ or sqlite:///a@b.db"
    )


def test_log_lines_are_redacted():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "store %s", ("mysql://u:pw@h/db",),
                               None)  # fmt: skip
    assert _redact_record(record) and record.getMessage() == "store mysql://u:***@h/db"


class NeedsBasicAuth(Quiet):
    seen: list[str | None] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        NeedsBasicAuth.seen.append(auth)
        good = "Basic " + base64.b64encode(b"alice:s3cr@t").decode()
        self.answer(200, b"OK") if auth == good else self.answer(401)


def test_http_credentials_move_to_mlflow_variables_and_the_check_sends_them(monkeypatch):
    """Before: urllib took `alice:s3cr%40t@127.0.0.1` for a host and said "not reachable"."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    with http_server(NeedsBasicAuth) as uri:
        host = uri.removeprefix("http://")
        clean = tracking.resolve_tracking_uri(f"http://alice:{SECRET}@{host}")
        assert clean == uri
        assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
        assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr@t"
        NeedsBasicAuth.seen.clear()
        tracking.check_reachable(clean)
        assert NeedsBasicAuth.seen == ["Basic " + base64.b64encode(b"alice:s3cr@t").decode()]


@pytest.mark.parametrize("uri", [
    f"http://alice:{SECRET}@127.0.0.1:{{port}}",
    f"postgresql://alice:{SECRET}@127.0.0.1:{{port}}/mlflow",
    f"htp://alice:{SECRET}@127.0.0.1:{{port}}",
])  # fmt: skip
def test_no_error_line_shows_a_password(uri, ws, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri.format(port=free_port()))
    code, err, _ = timed(lambda: run_stage_here("math_demos", MATH, monkeypatch, capsys),
                         uri.split(":")[0] + " with a password")  # fmt: skip
    line = one_error_line(err)
    assert code == 1 and "s3cr" not in line and "127.0.0.1" in line, line
    if uri.startswith("http"):  # moved to MLFLOW_TRACKING_PASSWORD, also for subprocesses
        assert "s3cr" not in os.environ["MLFLOW_TRACKING_URI"]
    unchanged(ws)


class AuthProxy(http.server.BaseHTTPRequestHandler):
    """Basic auth (alice / s3cr@t) in front of a real MLflow server, as nginx would put it."""

    upstream = ""

    def log_message(self, *args: object) -> None:
        pass

    def relay(self) -> None:
        good = "Basic " + base64.b64encode(b"alice:s3cr@t").decode()
        if self.headers.get("Authorization") != good:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")
        }
        request = urllib.request.Request(self.upstream + self.path, body, headers,
                                         method=self.command)  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                code, data, ctype = answer.status, answer.read(), answer.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            code, data, ctype = exc.code, exc.read(), exc.headers["Content-Type"]
        self.send_response(code)
        self.send_header("Content-Type", ctype or "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = relay


@pytest.mark.slow  # a real mlflow server and a real stage process (~30 s)
def test_a_uri_with_credentials_works_end_to_end(ws, tmp_path, mlflow_template_db):
    """`http://alice:s3cr%40t@host` reaches a server behind basic auth; no password in the
    output, the run's tags or params."""
    db = tmp_path / "server.db"
    shutil.copy(mlflow_template_db, db)
    with serve_mlflow(f"sqlite:///{db}", tmp_path / "artifacts", tmp_path / "server.log") as up:
        AuthProxy.upstream = up
        with http_server(AuthProxy) as proxy:
            uri = proxy.replace("http://", f"http://alice:{SECRET}@")
            env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
            proc = subprocess.run(
                [PYTHON, str(REPO / "stages/math_demos.py"), "--params", "params.yaml", *MATH],
                cwd=ws, env=env | {"MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                timeout=300,
            )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "s3cr" not in proc.stdout + proc.stderr
    assert f"at {proxy}" in proc.stderr  # the run's log line names the server, not the password
    client = mlflow.MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("math-demos").experiment_id])
    assert run.info.status == "FINISHED"
    assert "s3cr" not in repr(run.data.tags) + repr(run.data.params)


# ---- where the database is ---------------------------------------------------------------------


def test_a_stage_started_elsewhere_uses_the_repository_database(ws, tmp_path, monkeypatch, capsys):
    """Before: a new mlflow.db in the cwd. The relative sqlite path is anchored at the
    repository holding the params file."""
    (ws / "dvc.yaml").write_text("stages: {}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    argv = ["--params", str(ws / "params.yaml"), "--reports", str(ws / "reports/math")]
    monkeypatch.setattr(sys, "argv", ["math_demos.py", *argv])
    runpy.run_path(str(REPO / "stages/math_demos.py"), run_name="__main__")
    assert list(elsewhere.iterdir()) == []
    assert run_statuses(ws, "math-demos") == ["FINISHED"]


def test_no_repository_root_is_one_line(ws, tmp_path, monkeypatch, capsys):
    """Params file, cwd and stage script all outside any repository (the script is a copy:
    the real one sits in the repository's stages/, which would be found)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    script = tmp_path / "scripts" / "math_demos.py"
    script.parent.mkdir()
    shutil.copy(REPO / "stages/math_demos.py", script)
    monkeypatch.setattr(sys, "argv", ["math_demos.py", "--params", "params.yaml", *MATH])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(script), run_name="__main__")
    assert one_error_line(capsys.readouterr().err) == (
        "error: cannot place the tracking database mlflow.db: no repository root (a directory "
        f"with dvc.yaml or .git) above the params file or {ws}; run the stage in the repository "
        "or set tracking.uri to an absolute sqlite:////path/to/mlflow.db"
    )
    assert info.value.code == 1
    unchanged(ws)
    assert run_statuses(ws, "math-demos") == []


def test_unreachable_message_with_credentials_in_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:{free_port()}")
    uri = tracking.resolve_tracking_uri(None)
    with pytest.raises(TrackingError) as info:
        tracking.check_reachable(uri)
    assert "s3cr" not in str(info.value) and "alice" not in str(info.value)


@pytest.mark.parametrize("statement", ["INSERT INTO metrics", "INSERT INTO params"])
def test_a_signal_inside_a_database_write_still_ends_the_run_killed(tracking_uri, statement):
    """SIGINT delivered while MLflow's sqlite transaction is open (sent from inside it, so the
    timing is certain): the write completes, then the interrupt ends the run KILLED. Raised
    inside the transaction, it left the write lock held: the run stayed RUNNING ('database is
    locked'), seen once in a full suite run under load."""
    import signal

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from appliedtorch.core.cli import signals_raise

    fired: list[str] = []

    def interrupt(conn, cursor, sql: str, *args) -> None:
        if not fired and sql.lstrip().upper().startswith(statement.upper()):
            fired.append(sql)
            os.kill(os.getpid(), signal.SIGINT)

    event.listen(Engine, "after_cursor_execute", interrupt)
    try:
        params = {"seed": 1, "lr": 0.1}
        with (
            pytest.raises(KeyboardInterrupt),
            signals_raise(),
            tracking.stage_run("sig-db", "train_mlp", params) as run,
        ):
            run.log_metrics({"train_loss": 1.0}, step=0)
            time.sleep(5)  # a KeyboardInterrupt must have come before this ends
    finally:
        event.remove(Engine, "after_cursor_execute", interrupt)
    assert fired, f"no {statement} was executed"
    client = mlflow.MlflowClient(tracking_uri)
    (got,) = client.search_runs([client.get_experiment_by_name("sig-db").experiment_id])
    assert got.info.status == "KILLED"
    assert got.data.params["lr"] == "0.1"  # the interrupted writes completed
    assert got.data.metrics.get("train_loss") == (1.0 if "metrics" in statement else None)
