"""A sweep's MLflow runs: one parent, whose children are the runs of its grid points.

    parent = open_parent(uri, "mnist-mlp", "lr-grid", commit)
    run_id = claim_child(uri, "lr-grid-baseline-s42", parent, {"variant": "baseline", "seed": "42"})
    retire_others(uri, "lr-grid-baseline-s42", keep=run_id)

A grid point's run is the stage's own run (tagged `dvc.exp_name` by the stage). A point trained
twice (its node died after the first attempt's run began) has one run per attempt: the one its
pushed experiment came from is the child; the others end FAILED, tagged `sweep.superseded_by`,
and are never counted. Imports mlflow inside each function, like the rest of this package.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from appliedtorch.tracking.run import EXPERIMENT_TAGS

# Tags of a sweep's runs; `sweep`, `variant` and `seed` as in the tracking contract.
SWEEP, VARIANT, SEED, ROLE = "sweep", "variant", "seed", "sweep.role"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag: the UI shows the children under it
SUPERSEDED = "sweep.superseded_by"


def _client(uri: str) -> Any:
    import mlflow

    return mlflow.MlflowClient(uri)


def runs_named(uri: str, exp_name: str) -> list[Any]:
    """Every run whose stage ran as DVC experiment `exp_name`, newest first."""
    client = _client(uri)
    return client.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`dvc.exp_name` = '{exp_name}'",
        order_by=["attributes.start_time DESC"],
    )


def open_parent(uri: str, experiment: str, sweep: str, commit: str) -> str:
    """The sweep's parent run in `experiment` (created, or the one a previous run of the same
    sweep on the same commit left), marked RUNNING; its id."""
    import mlflow

    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    # Created with its kind tag, so the points' stages, started together, need not tag it.
    exp_id = (
        exp.experiment_id if exp else client.create_experiment(experiment, tags=EXPERIMENT_TAGS)
    )
    found = client.search_runs(
        [exp_id],
        filter_string=(
            f"tags.`{ROLE}` = 'parent' and tags.{SWEEP} = '{sweep}' "
            f"and tags.`git.commit` = '{commit}'"
        ),
        run_view_type=mlflow.entities.ViewType.ACTIVE_ONLY,
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    tags = {ROLE: "parent", SWEEP: sweep, "git.commit": commit, "mlflow.runName": sweep}
    return client.create_run(exp_id, tags=tags).info.run_id


def end_parent(
    uri: str, run_id: str, status: str, metrics: Mapping[str, float], text: str | None = None
) -> None:
    """Log the sweep's summary metrics (and its comparison as `comparison.txt`), end it `status`."""
    client = _client(uri)
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    if text is not None:
        client.log_text(run_id, text, "comparison.txt")
    client.set_terminated(run_id, status=status)


def claim_child(uri: str, exp_name: str, parent_id: str, tags: Mapping[str, str]) -> str | None:
    """Make the newest FINISHED run of `exp_name` a child of `parent_id`, tagged with `tags`
    (sweep, variant, seed); its id, or None when the stage left no finished run."""
    finished = [r for r in runs_named(uri, exp_name) if r.info.status == "FINISHED"]
    if not finished:
        return None
    run_id = finished[0].info.run_id
    client = _client(uri)
    for key, value in {**tags, PARENT_TAG: parent_id}.items():
        client.set_tag(run_id, key, str(value))
    return run_id


def retire_others(uri: str, exp_name: str, keep: str) -> list[str]:
    """End every other run of `exp_name` FAILED (a node died under it, or its experiment was
    never pushed) and take it out of the sweep; the ids retired."""
    client = _client(uri)
    retired = []
    for run in runs_named(uri, exp_name):
        if run.info.run_id == keep:
            continue
        if run.info.status != "FAILED":
            client.set_terminated(run.info.run_id, status="FAILED")
        if PARENT_TAG in run.data.tags:
            client.delete_tag(run.info.run_id, PARENT_TAG)
        client.set_tag(run.info.run_id, SUPERSEDED, keep)
        retired.append(run.info.run_id)
    return retired


def child_of(uri: str, exp_name: str, parent_id: str) -> str | None:
    """The id of `exp_name`'s run that is already a child of `parent_id`, or None."""
    for run in runs_named(uri, exp_name):
        if run.data.tags.get(PARENT_TAG) == parent_id and run.info.status == "FINISHED":
            return run.info.run_id
    return None


def run_lineage(uri: str, run_id: str) -> dict[str, str]:
    """A run's `dvc.exp_name`, `dvc.stage` and `git.commit` tags (what brings its experiment
    back); a KeyError names a run that ran outside `dvc exp run`."""
    tags = _client(uri).get_run(run_id).data.tags
    return {key: tags[key] for key in ("dvc.exp_name", "dvc.stage", "git.commit")}
