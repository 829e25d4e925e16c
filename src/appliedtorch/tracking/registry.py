"""The model registry: a trained classifier registered from its run, `champion` moved by a rule,
and logged models loaded back with no pickle deserialisation.

    python stages/register.py --params params.yaml --classifier mlp reports/mlp/metrics.json models/mlp.pt
    >>> model, metadata = load_logged_model("models:/mnist-mlp@champion")

Registration is its own step, after the training stage's outputs have landed: the run is found
by the params it logged and the metrics.json it logged (byte for byte the workspace's), so a
failed or a later run never takes the place of the model in models/. A version is tagged with
its run's id, so registering the same run again changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

from appliedtorch.core.errors import TrackingError
from appliedtorch.core.redact import error_line, redact
from appliedtorch.core.utils import read_regular
from appliedtorch.tracking.lineage import data_hash
from appliedtorch.tracking.uri import open_store, resolve_tracking_uri

log = logging.getLogger(__name__)

CHAMPION = "champion"
# How many of the newest finished runs with the workspace's params are compared with its
# metrics.json: more only when the same params were trained more often than this.
CANDIDATE_RUNS = 50
# MLflow loads a pickled model (or a pt2 archive holding pickled objects) by running the
# pickle: code of whoever wrote the model. The project's models are exported programs.
NO_PICKLE = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}


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


def register_version(
    client: Any, run_id: str, name: str, test_accuracy: float, model_uri: str | None = None
) -> dict[str, Any]:
    """Register run `run_id`'s logged model (`model_uri`, default its model named `model`) as a
    version of `name`, tagged with the run id, and move `champion` to it when `should_promote`
    says so. A version already tagged with this run id is kept as it is (no duplicate).
    Returns what was done; the run is tagged with it too."""
    import mlflow

    found = client.search_model_versions(f"name = '{name}' and tags.run_id = '{run_id}'")
    if found:
        version = found[0].version
        log.info("%s version %s is already run %s's model: nothing to do", name, version, run_id)
        return {"registry.name": name, "registry.version": version, "registry.new": False}
    tags = client.get_run(run_id).data.tags
    version_tags = {
        "test_accuracy": repr(float(test_accuracy)),
        "data.md5": data_hash(tags),
        "data.source": tags.get("data.source", ""),
        "run_id": run_id,
    }
    source = model_uri or logged_model_uri(client, run_id)
    mv = mlflow.register_model(source, name, tags=version_tags)
    champion = None
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        champion = client.get_model_version_by_alias(name, CHAMPION)
    promote, why = should_promote(version_tags, champion.tags if champion else None)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    log.info("registered %s version %s; %s", name, mv.version, why)
    result = {"registry.name": name, "registry.version": mv.version, "registry.champion": promote}
    for key, value in (result | {"registry.decision": why}).items():
        client.set_tag(run_id, key, str(value))
    return result | {"registry.new": True}


def logged_model_uri(client: Any, run_id: str, name: str = "model") -> str:
    """`models:/<model id>` of the model run `run_id` logged as `name` (the newest, if several).

    MLflow 3 keeps a logged model apart from the run's artifacts: registering `runs:/<id>/model`
    finds it too, but only after a WARNING that the run "has no artifacts at artifact path
    'model'", which reads like a failure in every normal registration."""
    run = client.get_run(run_id)
    found = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"name = '{name}' AND source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        max_results=1,
    )
    if not found:
        return f"runs:/{run_id}/{name}"  # MLflow then says what is missing
    return f"models:/{found[0].model_id}"


def run_that_logged(
    client: Any, experiment: str, params_md5: str, artifact: str, local: Path
) -> str | None:
    """The id of the newest FINISHED run in `experiment` with tag `params.md5` whose logged
    `artifact` has exactly `local`'s bytes; None when there is none."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    want = read_regular(local, 16 << 20)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.status = 'FINISHED' and tags.`params.md5` = '{params_md5}'",
        order_by=["attributes.start_time DESC"],
        max_results=CANDIDATE_RUNS,
    )
    # MLflow draws a progress bar per download on stderr, even when it is not a terminal: two
    # lines before a stage's one `error:` line. These files are a few KB.
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with (
        tempfile.TemporaryDirectory(prefix="appliedtorch-register-") as tmp,
        mock.patch.dict(os.environ, quiet),
    ):
        for i, run in enumerate(runs):
            try:
                path = client.download_artifacts(run.info.run_id, artifact, f"{tmp}/{i}")
            except Exception:  # noqa: BLE001 - a run without that artifact is not the one
                continue
            if Path(path).is_file() and Path(path).read_bytes() == want:
                return run.info.run_id
    return None


def register_trained(
    name: str, params_md5: str, metrics_file: Path, test_accuracy: float, uri: str | None
) -> dict[str, Any]:
    """Register the model of the training run that wrote `metrics_file` (logged with the params
    whose hash is `params_md5`, in experiment `name`) as a version of `name`; see
    `register_version`. A one-line TrackingError when the store has no such run."""
    import mlflow

    tracking_uri = open_store(uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        client = mlflow.MlflowClient(tracking_uri)
        run_id = run_that_logged(client, name, params_md5, metrics_file.name, metrics_file)
        if run_id is None:
            raise TrackingError(
                f"no finished MLflow run in experiment '{name}' at {redact(tracking_uri)} logged "
                f"{metrics_file} (trained elsewhere, or its run was deleted): retrain it with "
                "`dvc repro -f` on its training stage, or set tracking.register_models: false"
            )
        return register_version(client, run_id, name, test_accuracy) | {"run_id": run_id}
    except TrackingError:
        raise
    except Exception as exc:  # noqa: BLE001 - any backend failure is reported the same way
        raise TrackingError(
            f"cannot register '{name}' at {redact(tracking_uri)}: {error_line(exc)}"
        ) from None


@contextlib.contextmanager
def env_set(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block; the previous values come back after."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load_logged_model(
    uri: str, check: Callable[[dict[str, Any]], Any] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Load a logged model (`models:/name@alias`, `runs:/<id>/model`, `models:/m-...`) and its
    metadata; a one-line TrackingError when it cannot be found. `check(metadata)` runs before
    the model is loaded (it raises to refuse it). A model that would be unpickled to load (a
    pickle-format model, or a pt2 archive holding pickled objects) is refused: unpickling runs
    whatever code its author put in it."""
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(resolve_tracking_uri(None))
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as exc:  # noqa: BLE001 - unknown name, alias, run or a broken store
        raise TrackingError(f"model '{uri}' not found or not loadable: {error_line(exc)}") from None
    if check is not None:
        check(dict(info.metadata or {}))
    try:
        with env_set(NO_PICKLE):
            model = mlflow.pytorch.load_model(uri)  # logged from the CPU (portable_model)
    except Exception as exc:  # noqa: BLE001 - unknown name, alias, run or a broken store
        if "pickle" in str(exc).lower():
            raise TrackingError(
                f"model '{uri}' refused: loading it would unpickle Python objects, which can run "
                "any code; appliedtorch loads exported (pt2) models only: log it with "
                "serialization_format='pt2'"
            ) from None
        raise TrackingError(f"model '{uri}' not found or not loadable: {error_line(exc)}") from None
    return model, dict(info.metadata or {})
