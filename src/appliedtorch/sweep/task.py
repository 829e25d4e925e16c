"""One grid point on whichever node Ray chose: clone, train as a DVC experiment, push, report.

    result = run_point(job)   # the driver runs it as a Ray task (driver.py)

In a fresh clone of the git remote at the sweep's commit (never a shared workspace: DVC's
rw.lock would serialise the points): `dvc exp run --pull` fetches the inputs from the DVC remote
(or makes them from the configured data source), trains the stages with the point's `-S`
overrides, then `dvc push` and a push of the experiment's git ref (what `dvc exp push` does)
publish outputs and experiment, outputs first, so an experiment ref on the remote always has its
data. The point's MLflow run (the stage's own, tagged `dvc.exp_name`) becomes a child of the
sweep's parent run (the driver claims it when the point comes back: a task needs no MLflow).

An attempt that finds its experiment already on the git remote trains nothing (a retry after the
node died between push and reply). Whatever stops the task (a cancel, Ctrl-C on the driver) stops
the commands it started: they run in their own process group, killed on the way out.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from appliedtorch.core.errors import AppliedTorchError
from appliedtorch.sweep.grid import SECTIONS, Point

KILL_GRACE = 10.0
# Polls whether the worker (argv[1]) still lives; once it is gone, kills the group (argv[2]).
WATCHDOG = """
import os, signal, sys, time
worker, group = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == worker:
    time.sleep(1)
try:
    os.killpg(group, signal.SIGKILL)
except ProcessLookupError:
    pass
"""  # seconds between SIGTERM (the stage ends its MLflow run KILLED) and SIGKILL


class PointFailed(AppliedTorchError):
    """A grid point failed for a reason of its own (a bad override, a stage error): one line."""


@dataclass(frozen=True)
class Job:
    """What a task needs besides its point: where the code, data and runs are shared."""

    point: Point
    git_url: str
    commit: str
    tracking_uri: str
    clones: str = ""  # directory for the clone on the node; '' = the node's temporary directory


def exp_ref(commit: str, name: str) -> str:
    """The git ref DVC keeps experiment `name` of baseline `commit` under."""
    return f"refs/exps/{commit[:2]}/{commit[2:]}/{name}"


def pushed(git_url: str, commit: str, names: list[str]) -> set[str]:
    """Which of the experiments `names` (of baseline `commit`) the git remote already holds."""
    out = subprocess.run(
        ["git", "ls-remote", git_url, f"refs/exps/{commit[:2]}/{commit[2:]}/*"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if out.returncode != 0:
        raise AppliedTorchError(f"git ls-remote {git_url} failed: {out.stderr.strip()[-300:]}")
    refs = {line.split("\t")[-1] for line in out.stdout.splitlines()}
    return {name for name in names if exp_ref(commit, name) in refs}


def node_name() -> str:
    """This node as the progress line shows it: its address and Ray's node id (8 characters)."""
    import ray

    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"


def run_point(job: Job) -> dict[str, Any]:
    """Train `job.point` as one DVC experiment and push it; return {name, variant, seed,
    metrics, node, seconds, trained}. The driver makes its MLflow run a child of the sweep's."""
    start, point = time.monotonic(), job.point
    trained = point.name not in pushed(job.git_url, job.commit, [point.name])
    metrics: dict[str, Any] = {}
    if trained:
        root = Path(job.clones or tempfile.gettempdir()) / "appliedtorch-sweep"
        work = root / f"{point.name}-{uuid.uuid4().hex[:8]}"
        try:
            train_in_clone(job, work)
            metrics = read_metrics(work, point.stages)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return {
        "name": point.name,
        "variant": point.variant,
        "seed": point.seed,
        "metrics": metrics,
        "node": node_name(),
        "seconds": time.monotonic() - start,
        "trained": trained,
    }


def train_in_clone(job: Job, work: Path) -> None:
    """Clone at the commit, run the point's experiment, push its outputs and then its ref."""
    point, dvc = job.point, [sys.executable, "-m", "dvc"]
    work.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": job.tracking_uri,
        "DVC_NO_ANALYTICS": "1",
        # dvc.yaml's `python stages/...` and DVC itself: this node's environment first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        # The clone's code runs the stages, as the experiment's commit has it.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(work / "src"), os.environ.get("PYTHONPATH")])
        ),
    }
    call(["git", "clone", "-q", "--no-checkout", job.git_url, str(work)], work.parent, env)
    call(["git", "checkout", "-q", "--detach", job.commit], work, env)
    if not call(["git", "config", "user.name"], work, env, check=False).strip():
        call(["git", "config", "user.name", "appliedtorch sweep"], work, env)
        call(["git", "config", "user.email", "sweep@appliedtorch.invalid"], work, env)
    unlock(work / "dvc.lock", point.stages)
    sets = [arg for item in point.sets for arg in ("-S", item)]
    run = [*dvc, "exp", "run", "--pull", "-n", point.name, *sets]
    call([*run, *point.stages], work, env)
    call([*dvc, "push", "-q"], work, env)
    # What `dvc exp push` does once the outputs are pushed, without a second DVC start (~2 s).
    ref = exp_ref(job.commit, point.name)
    call(["git", "push", "-q", "origin", f"{ref}:{ref}"], work, env)


def unlock(lock: Path, stages: tuple[str, ...]) -> None:
    """Drop `stages` from dvc.lock, so that `dvc exp run` trains them even where the commit's
    lock already holds the same params (DVC would call them unchanged and log no run)."""
    if not lock.exists():
        return
    data = yaml.safe_load(lock.read_text()) or {}
    for stage in stages:
        (data.get("stages") or {}).pop(stage, None)
    lock.write_text(yaml.safe_dump(data, sort_keys=False))


def read_metrics(work: Path, stages: tuple[str, ...]) -> dict[str, Any]:
    """{section: its metrics.json} of the trained stages."""
    out = {}
    for stage in stages:
        section = SECTIONS[stage]
        path = work / "reports" / section / "metrics.json"
        out[section] = json.loads(path.read_text()) if path.exists() else {}
    return out


def call(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> str:
    """Run `cmd` in its own process group (killed if this task is stopped); its stdout. A
    failure raises PointFailed with the stage's `error:` line, or the command's last line."""
    with group(cmd, cwd, env) as proc:
        out, _ = proc.communicate()
    if check and proc.returncode != 0:
        raise PointFailed(f"{' '.join(cmd[2:5]) if cmd[1] == '-m' else cmd[0]}: {reason(out)}")
    return out


def reason(output: str) -> str:
    """Why a command failed: the stage's one `error:` line, else DVC's `ERROR:`, else the last."""
    lines = [" ".join(ln.split()) for ln in output.splitlines() if ln.strip()]
    for prefix in ("error:", "ERROR:"):
        found = [ln for ln in lines if ln.startswith(prefix)]
        if found:
            return found[-1][len(prefix) :].strip()[:400]
    return lines[-1][:400] if lines else "no output"


@contextlib.contextmanager
def group(cmd: list[str], cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`cmd` started in a new session; on any exit from the block before it ended (a cancel
    raises KeyboardInterrupt here), its whole group gets SIGTERM, then SIGKILL."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    # A process that outlives this worker (killed outright: its node lost, a forced cancel)
    # takes the command's group with it, so no stage keeps training unwatched.
    watch = [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(proc.pid)]
    watchdog = subprocess.Popen(watch, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop_group(proc)
        watchdog.kill()
        watchdog.wait()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to `proc`'s process group, SIGKILL after KILL_GRACE seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
