"""Servers started for real on 127.0.0.1: MLflow, and the team's PostgreSQL and S3-compatible store.

    with postgres_cluster(tmp) as db_uri, s3_server(log) as s3, serve_mlflow(db_uri, ...) as url:
        ...

PostgreSQL is Debian's (`apt-get install postgresql`): a private cluster made with `initdb` in a
temporary directory, started with `pg_ctl` on a free port, stopped and deleted at the end. The S3
store is moto's standalone server (`moto_server`, PyPI `moto[server]`). README's "Team setup"
section shows the same command lines.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from helpers import BIN


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
                str(BIN / "mlflow"),
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


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A port on 127.0.0.1 that accepts connections (the kernel does) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


# moto accepts any credentials; these are what the servers and DVC are given in the tests.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "appliedtorch-test-key",
    "AWS_SECRET_ACCESS_KEY": "appliedtorch-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def postgres_bindir() -> Path | None:
    """The directory holding initdb/pg_ctl: Debian's /usr/lib/postgresql/<newest>/bin, or PATH."""
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def missing_servers() -> str | None:
    """Why the team servers cannot run here (a reason for pytest.skip), or None."""
    if postgres_bindir() is None:
        return "PostgreSQL is not installed (initdb not found): apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb/pg_ctl as"
    if not (BIN / "moto_server").exists():
        return "moto_server not installed: pip install -e '.[dev]' (moto[server])"
    for module in ("psycopg", "boto3"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} not installed: pip install -e '.[team]'"
    return None


@contextlib.contextmanager
def postgres_cluster(log_path: Path) -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1 with an empty database `mlflow`; yields its URI.

    PostgreSQL refuses to run as root, so as root the cluster belongs to Debian's `postgres`
    user, in a directory under /tmp it can reach (pytest's tmp_path is private to root).
    """
    bindir = postgres_bindir()
    assert bindir is not None, missing_servers()
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="appliedtorch-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*as_user, *args], capture_output=True, text=True, timeout=120, cwd=root
        )
        if check and proc.returncode != 0:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    try:
        # trust: only this machine's loopback can connect, and only for the test's lifetime.
        # --locale=C: the machine's LANG may name a locale that is not generated.
        initdb = ["-D", str(data), "-U", "mlflow", "--auth=trust", "-E", "UTF8", "--locale=C"]
        pg(str(bindir / "initdb"), *initdb, "--no-sync")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        )
        start = ["-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "-t", "60"]
        pg(str(bindir / "pg_ctl"), *start, "start")
        pg(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if (data / "postmaster.pid").exists():
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop", check=False)
        if (root / "server.log").exists():
            shutil.copy(root / "server.log", log_path)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def s3_server(log_path: Path, buckets: tuple[str, ...] = ()) -> Iterator[str]:
    """moto's standalone S3-compatible server on 127.0.0.1 with `buckets` created; yields its URL."""

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_http(f"{url}/moto-api/", proc, log_path, timeout=60, interval=0.3)
            s3 = s3_client(url)
            for bucket in buckets:
                s3.create_bucket(Bucket=bucket)
            yield url
        finally:
            stop(proc)


def s3_client(endpoint: str):  # a boto3 S3 client
    """A boto3 S3 client for the test server at `endpoint`, with the test credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    )


def s3_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under `prefix` in `bucket` on the S3 server at `endpoint`."""
    pages = (
        s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    )
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
