"""What a sweep needs before any node starts, each refused in one line: a committed workspace
whose commit is on the git remote, a default DVC remote in the committed config, and a tracking
store every node can write to.

    commit = committed_head(root)
    git_url = git_remote(root, "origin", commit)
    dvc_name, dvc_url = dvc_remote(root)
    check_shared({"git remote": git_url, "DVC remote": dvc_url, "tracking URI": uri}, nodes)

A local path (a directory remote, `sqlite:///`, `file:`) is shared only while every node runs on
this machine (the embedded local instance, or a test's nodes on 127.0.0.1): a cluster that spans
machines needs URLs they all reach.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from appliedtorch.core.errors import AppliedTorchError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def git(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`git <args>` in `root`, output captured."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=120)


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`dvc <args>` in `root` with this interpreter's DVC, output captured."""
    cmd = [sys.executable, "-m", "dvc", *args]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


def last_line(text: str, default: str) -> str:
    """The last non-empty line of `text` (at most 300 characters), or `default`."""
    lines = [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else default


def committed_head(root: Path) -> str:
    """HEAD's commit; refuses a workspace with uncommitted changes (the nodes clone the commit,
    so a change only here would not be in any experiment)."""
    status = git(root, "status", "--porcelain", "--untracked-files=no")
    if status.returncode != 0:
        raise AppliedTorchError(f"{root} is not a git repository: {last_line(status.stderr, '')}")
    changed = [line[3:] for line in status.stdout.splitlines()]
    if changed:
        shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
        raise AppliedTorchError(
            f"uncommitted changes ({shown}): the nodes clone the last commit; commit and push them"
        )
    return git(root, "rev-parse", "HEAD").stdout.strip()


def git_remote(root: Path, remote: str, commit: str) -> str:
    """The URL of git remote `remote`, which must hold `commit` (fetched to check)."""
    url = git(root, "remote", "get-url", remote)
    if url.returncode != 0:
        raise AppliedTorchError(
            f"no git remote '{remote}': the nodes clone the sweep's commit from it "
            f"(`git remote add {remote} URL`, or pass --git-remote)"
        )
    fetched = git(root, "fetch", "-q", remote)
    if fetched.returncode != 0:
        reason = last_line(fetched.stderr, f"exit code {fetched.returncode}")
        raise AppliedTorchError(f"cannot fetch git remote '{remote}': {reason}")
    holding = git(root, "branch", "-r", "--contains", commit, "--list", f"{remote}/*")
    if not holding.stdout.strip():
        raise AppliedTorchError(
            f"commit {commit[:12]} is not on git remote '{remote}', where the nodes clone it "
            f"from: `git push {remote} HEAD` first"
        )
    return url.stdout.strip()


def dvc_remote(root: Path) -> tuple[str, str]:
    """The default DVC remote of the committed config (.dvc/config, which the clones have):
    (name, URL)."""
    name = dvc(root, "config", "--project", "core.remote").stdout.strip()
    if not name:
        raise AppliedTorchError(
            "no default DVC remote in .dvc/config: the nodes fetch data and push results "
            "through it (`dvc remote add -d NAME URL`, commit .dvc/config)"
        )
    url = dvc(root, "config", "--project", f"remote.{name}.url").stdout.strip()
    if is_local(url) and not Path(url).is_absolute():
        raise AppliedTorchError(
            f"DVC remote '{name}' is the relative path {url}: each clone would read it relative "
            "to itself; give an absolute path or a URL"
        )
    return name, url


def is_local(url: str) -> bool:
    """Whether `url` names a file on one machine: a path, `file:`, or an sqlite database."""
    return "://" not in url or url.startswith(("file:", "sqlite:"))


def local_addresses(here: str | None = None) -> set[str]:
    """This machine's addresses as Ray may name its nodes: loopback, the host name's and `here`
    (the driver's address as Ray sees it)."""
    found = set(LOOPBACK) | ({here} if here else set())
    with contextlib.suppress(OSError):
        found |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    return found


def check_shared(
    places: Mapping[str, str], node_addresses: Iterable[str], here: str | None = None
) -> None:
    """Refuse a local path (git or DVC remote, tracking URI) when a node runs on another
    machine than `here`, which could not reach it."""
    elsewhere = sorted(set(node_addresses) - local_addresses(here))
    if not elsewhere:
        return
    for what, url in places.items():
        if is_local(url):
            raise AppliedTorchError(
                f"the {what} {url} is a local file, but node {elsewhere[0]} runs on another "
                "machine: use one every node reaches (an http(s)/ssh/s3 URL; for MLflow, "
                "`mlflow server`)"
            )
