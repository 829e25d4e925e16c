"""A Ray cluster of real nodes on one machine, inside a network namespace with only loopback.

    with Namespace() as ns, ns.mlflow_server(db, artifacts, log) as uri, ns.ray_nodes(2, tmp) as nodes:
        ns.run([PYTHON, "-m", "appliedtorch.sweep", "run", ..., "--address", nodes.address])

`unshare -n` (root) makes the namespace; `lo` is brought up with iproute2's `ip`, or with the
SIOCSIFFLAGS ioctl where `ip` is missing. There Ray binds every port to 127.0.0.1: no traffic
leaves the machine. Each node (and the MLflow server) runs in its own PID namespace under
`unshare -p --fork --kill-child`: killing that one `unshare` process (its PID, which the test
started) ends the node and everything it started, as a machine dying would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from helpers import BIN, PYTHON

# struct ifreq: 16 bytes of name, then the flags (short); IFF_UP | IFF_RUNNING.
LO_UP = """
import fcntl, socket, struct
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    req = struct.pack("16sH14x", b"lo", 0)
    flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | 0x1 | 0x40))
"""

HTTP_OK = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)"


def why_no_namespace() -> str | None:
    """Why these tests cannot run here (a reason to skip), or None."""
    if os.geteuid() != 0:
        return "needs root to create a network namespace (unshare -n); CI runs as root"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"`{tool}` (util-linux) is not installed"
    if not (BIN / "ray").exists():
        return "ray is not installed: pip install -e '.[cluster]'"
    return None


@dataclass
class Nodes:
    """The running nodes: the head's address and each node's `unshare` process."""

    address: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def kill(self, index: int) -> None:
        """End node `index` at once, with every process it started."""
        self.procs[index].kill()
        self.procs[index].wait()


class Namespace:
    """A network namespace held open by a `sleep` the test started, with `lo` up."""

    def __enter__(self) -> Namespace:
        self.holder = subprocess.Popen(
            ["unshare", "-n", "sleep", "infinity"], stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 10
        while True:
            if self.holder.poll() is not None:  # e.g. a container without CAP_SYS_ADMIN
                raise RuntimeError(f"unshare -n failed: {self.holder.stderr.read().strip()}")
            with contextlib.suppress(OSError):  # the process is between fork and exec
                here = os.readlink("/proc/self/ns/net")
                if os.readlink(f"/proc/{self.holder.pid}/ns/net") != here:
                    break
            assert time.monotonic() < deadline, "unshare -n did not enter a new namespace"
            time.sleep(0.05)
        if shutil.which("ip"):
            self.run(["ip", "link", "set", "lo", "up"])
        else:
            self.run([PYTHON, "-c", LO_UP])
        return self

    def __exit__(self, *exc: object) -> None:
        self.holder.kill()
        self.holder.wait()

    def argv(self, cmd: list[str]) -> list[str]:
        """`cmd` run inside the namespace."""
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", *cmd]

    def run(self, cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run `cmd` inside the namespace; output captured, a failure raised with it."""
        proc = subprocess.run(self.argv(cmd), capture_output=True, text=True, **kwargs)
        if proc.returncode != 0:
            raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def popen(self, cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        """Start `cmd` inside the namespace in its own PID namespace, output to `log`."""
        full = self.argv(["unshare", "-p", "--fork", "--kill-child", *cmd])
        with log.open("w") as out:
            return subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_http(self, url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
        """Poll `url` from inside the namespace until it answers."""
        deadline = time.monotonic() + timeout
        poll = self.argv([PYTHON, "-c", HTTP_OK, url])
        while subprocess.run(poll, stderr=subprocess.DEVNULL).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()[-3000:])
            time.sleep(0.5)

    @contextlib.contextmanager
    def mlflow_server(self, db: Path, artifacts: Path, log: Path) -> Iterator[str]:
        """`mlflow server` on 127.0.0.1 in the namespace, runs in sqlite `db`; yields its URL."""
        port = 5000
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}"]
        cmd += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--workers", "1"]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = self.popen(cmd, log, env)
        try:
            self.wait_http(f"http://127.0.0.1:{port}/health", proc, log, timeout=180)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.kill()
            proc.wait()

    @contextlib.contextmanager
    def ray_nodes(self, count: int, logs: Path, env: dict) -> Iterator[Nodes]:
        """`count` Ray nodes of one CPU each (the first the head); yields them."""
        # Ray's unix sockets live under its temp dir: a short path (sun_path holds 107 bytes).
        temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
        start = [str(BIN / "ray"), "start", "--num-cpus=1", "--disable-usage-stats", "--block"]
        start += [f"--temp-dir={temp}"]
        nodes = Nodes("127.0.0.1:6379")
        try:
            head = ["--head", "--port=6379", "--include-dashboard=false"]
            for i in range(count):
                more = head if i == 0 else [f"--address={nodes.address}"]
                nodes.procs.append(self.popen([*start, *more], logs / f"node{i}.log", env))
                wait_for_line(logs / f"node{i}.log", "block forever", nodes.procs[i], 120)
            yield nodes
        finally:
            for proc in nodes.procs:
                proc.kill()
                proc.wait()
            shutil.rmtree(temp, ignore_errors=True)


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until `log` holds `text`; RuntimeError with its tail if `proc` ends or time runs out."""
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-3000:])
        time.sleep(0.3)


def descendants_running(pid: int, script: str) -> list[int]:
    """PIDs of `pid`'s descendants whose command line names `script`."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if any(script in part for part in child.cmdline()):
                found.append(child.pid)
    return found


def environ_of(pid: int) -> dict[str, str]:
    """The environment of process `pid` ({} once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}
