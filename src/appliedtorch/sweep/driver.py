"""The sweep's driver: grid points out as Ray tasks, results back through the remotes and MLflow.

    outcome = run_sweep(plan)   # python -m appliedtorch.sweep (cli.py) builds `plan`

Without an address it starts a Ray instance on this machine for the sweep and stops it after;
with one it joins that cluster: the same code either way. A point already pushed to the git
remote is not sent again (a rerun trains nothing that finished); Ray retries a point whose node
died (`retries`); a point that fails for a reason of its own fails alone, with its one line.
Ctrl-C cancels the points still out (each task stops the commands it started), ends the parent
run KILLED and stops the local instance; what finished stays pushed.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliedtorch.sweep.checks import check_shared
from appliedtorch.sweep.grid import Point
from appliedtorch.sweep.task import Job, PointFailed, pushed, run_point

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """A checked sweep: its points, where code, data and runs are shared, and the resources."""

    root: Path
    points: list[Point]
    commit: str
    git_remote: str
    git_url: str
    dvc_url: str
    tracking_uri: str
    experiment: str  # the MLflow experiment of the parent run (the first stage's)
    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    retries: int = 3
    clones: str = ""
    local_cpus: int | None = None  # CPUs of the embedded instance (None: Ray counts them)


@dataclass
class Outcome:
    """What came back: each point's result, each failed point's one line, the parent run."""

    parent_id: str
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    trained: int = 0


@contextlib.contextmanager
def cluster(address: str | None, cpus: int | None) -> Iterator[Any]:
    """Ray connected: to the cluster at `address`, or a local instance started for the block."""
    import ray

    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,  # nothing reads it; it costs a process and memory
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    try:
        yield ray
    finally:
        ray.shutdown()  # a local instance stops with it


def run_sweep(plan: Plan, out: Any = None) -> Outcome:
    """Run every point not already pushed, on the cluster; return what came back."""
    from appliedtorch.sweep.progress import Progress
    from appliedtorch.tracking.sweep import end_parent, open_parent

    with cluster(plan.address, plan.local_cpus) as ray:
        nodes = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        places = {"git remote": plan.git_url, "DVC remote": plan.dvc_url}
        check_shared(
            places | {"tracking URI": plan.tracking_uri}, nodes, ray.util.get_node_ip_address()
        )
        done = pushed(plan.git_url, plan.commit, [p.name for p in plan.points])
        todo = [p for p in plan.points if p.name not in done]
        # The points start first: the parent run opens while they run (they need no MLflow).
        refs = submit(ray, plan, todo)
        try:
            sweep = plan.points[0].sweep
            outcome = Outcome(open_parent(plan.tracking_uri, plan.experiment, sweep, plan.commit))
        except BaseException:
            cancel(ray, list(refs))
            raise
        # The comparison's SciPy and `dvc exp show` reader load while the points run.
        background_import("scipy.stats", "appliedtorch.recipes", "appliedtorch.sweep.results")
        progress = Progress(len(plan.points), len(done), slots(ray, plan.cpus), out)
        try:
            collect(ray, refs, plan, outcome, progress)
            claim_done(plan, outcome, [p for p in plan.points if p.name in done])
        except BaseException:
            end_parent(plan.tracking_uri, outcome.parent_id, "KILLED", {})
            raise
        finally:
            progress.close()
    return outcome


def background_import(*modules: str) -> threading.Thread:
    """Import `modules` in a daemon thread; the thread. An import elsewhere waits for it, and
    raises again whatever the thread's import raised."""

    def load() -> None:
        with contextlib.suppress(Exception):
            for name in modules:
                importlib.import_module(name)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    return thread


def slots(ray: Any, cpus: float) -> int:
    """How many points the cluster runs at once (its CPUs over each point's)."""
    return max(1, math.floor(ray.cluster_resources().get("CPU", 1) / max(cpus, 1e-9) + 1e-9))


def claim(plan: Plan, outcome: Outcome, point: Point) -> str | None:
    """Make the point's finished MLflow run a child of the sweep's parent run; its id."""
    from appliedtorch.tracking.sweep import claim_child

    tags = {"sweep": point.sweep, "variant": point.variant, "seed": str(point.seed)}
    return claim_child(plan.tracking_uri, point.name, outcome.parent_id, tags)


def claim_done(plan: Plan, outcome: Outcome, done: list[Point]) -> None:
    """Points a previous run of this sweep pushed: their runs become (or stay) children."""
    for point in done:
        run_id = claim(plan, outcome, point)
        outcome.results[point.name] = {"name": point.name, "run_id": run_id, "trained": False}


def submit(ray: Any, plan: Plan, todo: list[Point]) -> dict[Any, Point]:
    """One Ray task per point: its CPUs and GPU fraction, retried where its node dies (never
    for an error of its own)."""
    task = ray.remote(run_point).options(
        num_cpus=plan.cpus, num_gpus=plan.gpus, max_retries=plan.retries, retry_exceptions=False
    )
    refs = {}
    for point in todo:
        job = Job(point, plan.git_url, plan.commit, plan.tracking_uri, plan.clones)
        refs[task.remote(job)] = point
    return refs


def collect(ray: Any, refs: dict[Any, Point], plan: Plan, outcome: Outcome, progress: Any) -> None:
    """Wait for every task and claim its run, one progress line each; Ctrl-C cancels the rest
    (see cancel)."""
    pending = dict(refs)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                point = pending.pop(ref)
                try:
                    result = ray.get(ref)
                    result["run_id"] = claim(plan, outcome, point)
                    if result["run_id"] is None:  # e.g. DVC restored it from a run-cache
                        raise PointFailed(
                            f"{point.name} has no FINISHED MLflow run at {plan.tracking_uri}"
                        )
                except Exception as exc:  # noqa: BLE001 - each point's failure is its own line
                    outcome.failed[point.name] = failure_line(exc)
                    progress.failed(point, outcome.failed[point.name], len(pending))
                    continue
                outcome.results[point.name] = result
                outcome.trained += bool(result["trained"])
                progress.finished(result, len(pending))
    except BaseException:
        cancel(ray, list(pending))
        raise


def failure_line(exc: BaseException) -> str:
    """A failed task's one line: the task's own error (PointFailed), or what Ray says."""
    cause = getattr(exc, "cause", None)
    if cause is not None and not isinstance(cause, type(exc)):
        return str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


def cancel(ray: Any, refs: list[Any], grace: float = 20.0) -> None:
    """Stop the tasks still out: a KeyboardInterrupt in each (its commands are stopped), then,
    for any still running after `grace` seconds, their worker processes."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    deadline = time.monotonic() + grace
    while refs and time.monotonic() < deadline:
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=1.0)
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    print(f"sweep stopped: {len(refs)} task(s) forced", file=sys.stderr) if refs else None


def finish(plan: Plan, outcome: Outcome, out_dir: Path) -> list[str]:
    """Retire every run of a point but its child, pull the experiments, write and log the
    comparison, end the parent run (FAILED when a point failed); the comparison's lines."""
    from appliedtorch.core.utils import write_text
    from appliedtorch.recipes import shown_experiments
    from appliedtorch.sweep.results import comparison, pull
    from appliedtorch.tracking.sweep import end_parent, retire_others

    for name, result in outcome.results.items():
        if result.get("run_id"):
            retire_others(plan.tracking_uri, name, result["run_id"])
    names = [p.name for p in plan.points if p.name in outcome.results]
    pull(plan.root, plan.git_remote, names)
    lines, summary = comparison(plan.points, shown_experiments())
    lines += [f"  FAILED {name}: {line}" for name, line in outcome.failed.items()]
    text = "\n".join(lines) + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "comparison.txt", text)
    status = "FAILED" if outcome.failed else "FINISHED"
    end_parent(plan.tracking_uri, outcome.parent_id, status, summary, text)
    return lines
