"""One stage execution is one MLflow run; and the newest finished run of each experiment.

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
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from appliedtorch.core.errors import AppliedTorchError, TrackingError
from appliedtorch.core.redact import error_line, redact
from appliedtorch.core.utils import first_line
from appliedtorch.tracking.handle import StageRun, database_writes
from appliedtorch.tracking.lineage import dataset_inputs, lineage_tags, params_md5
from appliedtorch.tracking.uri import (
    bound_store_retries,
    check_reachable,
    ensure_schema,
    repo_root,
    resolve_tracking_uri,
    sqlite_path,
)

log = logging.getLogger(__name__)

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
    if EXPERIMENT_KIND_TAG in (experiment.tags or {}):
        return
    try:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    except Exception:  # noqa: BLE001 - MLflow's store errors come in several types
        # Stages started together (a sweep's points) tag a new experiment at once, and the
        # store refuses the second insert of the same tag: fine if the tag is there now.
        tags = client.get_experiment(experiment.experiment_id).tags or {}
        if EXPERIMENT_KIND_TAG not in tags:
            raise


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
        with database_writes(tracking_uri):
            ensure_schema(tracking_uri)
            open_experiment(mlflow, experiment, tracking_uri)
            if system_metrics and not os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"):
                mlflow.set_system_metrics_sampling_interval(SYSTEM_METRICS_INTERVAL)
            active, resume_tags = start_run(mlflow, stage, resume_run_id, system_metrics)
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported the same way
        raise TrackingError(
            f"cannot use MLflow tracking at {redact(tracking_uri)}: {error_line(exc)}"
        ) from None
    run = StageRun(mlflow, active, tracking_uri)
    try:
        run.set_tags(
            lineage_tags(stage, root)
            | {"params.md5": params_md5(params)}
            | dict(tags or {})
            | resume_tags
        )
        with database_writes(tracking_uri):
            mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})
        run.log_datasets(dataset_inputs(dict(tags or {})))
        log.info("MLflow run %s in experiment '%s' at %s", run.run_id, experiment, tracking_uri)
        yield run
    except BaseException as exc:
        with database_writes(tracking_uri):
            end_failed(mlflow, run, exc, tracking_uri)
        raise
    else:
        with database_writes(tracking_uri):
            not_ended = end_run(mlflow, "FINISHED")
        if not_ended:
            raise TrackingError(
                f"cannot end MLflow run {run.run_id} at {redact(tracking_uri)}: {not_ended}; "
                "it stays RUNNING (the stage's outputs are written)"
            )


def open_experiment(mlflow: Any, experiment: str, tracking_uri: str) -> None:
    """Create `experiment` if needed (artifacts beside an sqlite database), make it active and
    mark it as a model-training experiment."""
    if mlflow.get_experiment_by_name(experiment) is None:
        location = None
        if (db := sqlite_path(tracking_uri)) is not None:
            # Keep artifacts beside the database, not wherever the stage happened to run.
            location = (db.parent / "mlartifacts" / experiment).as_uri()
        # Another stage may create it concurrently: then it already exists, which is fine.
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            mlflow.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
    exp = mlflow.set_experiment(experiment)
    mark_model_training(mlflow.MlflowClient(), exp)


def start_run(
    mlflow: Any, stage: str, resume_run_id: str | None, system_metrics: bool
) -> tuple[Any, dict[str, str]]:
    """The active run: `resume_run_id` reopened (tag `resumed`), or a new one, linked to the run
    it could not reopen (tag `resumed_from`). Named `<stage>@<dvc exp name>` under `dvc exp`."""
    exp_name = os.environ.get("DVC_EXP_NAME")
    run_name = f"{stage}@{exp_name}" if exp_name else f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    active = reopen_run(mlflow, resume_run_id, system_metrics) if resume_run_id else None
    if active is not None:
        return active, {"resumed": "true"}
    active = mlflow.start_run(run_name=run_name, log_system_metrics=system_metrics)
    return active, ({"resumed_from": resume_run_id} if resume_run_id else {})


def end_failed(mlflow: Any, run: StageRun, exc: BaseException, tracking_uri: str) -> None:
    """End the run KILLED (a signal) or FAILED as the stage's block raised `exc`. A failure inside
    MLflow itself becomes one TrackingError line; a run that cannot be ended is said so."""
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    not_ended = end_run(mlflow, status)
    ended = f"the run ended {status}"
    if not_ended:
        ended = f"the run could not be ended ({not_ended}) and stays RUNNING"
    if raised_in_mlflow(exc) and not isinstance(exc, KeyboardInterrupt):
        raise TrackingError(
            f"MLflow tracking at {redact(tracking_uri)} failed during run {run.run_id}: "
            f"{error_line(exc)}; {ended}"
        ) from None
    if not_ended and isinstance(exc, AppliedTorchError):
        exc.args = (f"{exc}; MLflow: {ended}",)  # still one line
    elif not_ended:  # a signal or a bug: its own error line follows this one
        log.warning("MLflow run %s: %s", run.run_id, ended)


def end_run(mlflow: Any, status: str) -> str | None:
    """End the active run with `status`; None, or what stopped it (the store is unwritable)."""
    try:
        mlflow.end_run(status=status)
    except Exception as exc:  # noqa: BLE001 - any backend failure: the caller reports one line
        return error_line(exc)
    return None


def raised_in_mlflow(exc: BaseException) -> bool:
    """Whether `exc` came out of MLflow's code (a store or server failing mid-run), not the
    stage's own work."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("mlflow."):
            return True
        tb = tb.tb_next
    return False


def reopen_run(mlflow: Any, run_id: str, system_metrics: bool = False) -> Any:
    """Continue an interrupted run; None (with a warning) if this store does not have it."""
    try:
        return mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
    except mlflow.exceptions.MlflowException as exc:
        log.warning(
            "cannot continue MLflow run %s (%s); starting a new one", run_id, first_line(exc)
        )
        return None


def newest_finished(client: Any, experiment_id: str, want: Mapping[str, str]) -> tuple[Any, bool]:
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
    if (db := sqlite_path(tracking_uri)) is not None and not db.exists():
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
            run, matched = newest_finished(client, exp.experiment_id, want)
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
            f"cannot read MLflow runs at {redact(tracking_uri)}: {error_line(exc)}"
        ) from None
    return out
