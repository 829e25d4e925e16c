"""`StageRun`: the handle a stage body logs through (metrics, tags, datasets, files, the model).

    with stage_run("mnist-mlp", "train_mlp", params, uri) as run:   # tracking.run
        run.log_metrics({"test_accuracy": 0.97}, step=3)
        run.log_model(model, "model", example_pixels, metadata={"classes": [...]})

On a database store every write is whole: a signal waits until it returns (`database_writes`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from appliedtorch.core.utils import signals_held
from appliedtorch.tracking.uri import DB_PORTS, uri_scheme

F = TypeVar("F", bound=Callable[..., Any])


def database_writes(tracking_uri: str) -> contextlib.AbstractContextManager[None]:
    """Around MLflow calls on a database store (sqlite, PostgreSQL, ...): SIGINT and SIGTERM wait
    until the call returns. A KeyboardInterrupt raised inside its transaction left the connection
    holding sqlite's write lock, so ending the run KILLED then failed with 'database is locked'
    and the run stayed RUNNING. Over HTTP an interrupted request is harmless and not delayed."""
    database = uri_scheme(tracking_uri) in {"sqlite", *DB_PORTS}
    return signals_held() if database else contextlib.nullcontext()


def uninterrupted(method: F) -> F:
    """A StageRun method whose MLflow writes a signal does not cut in half (`database_writes`)."""

    @functools.wraps(method)
    def wrapper(self: StageRun, *args: Any, **kwargs: Any) -> Any:
        with database_writes(self.tracking_uri):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class StageRun:
    """Handle on the active MLflow run, passed to the stage body."""

    def __init__(self, mlflow_module: Any, run: Any, tracking_uri: str = ""):
        self.mlflow = mlflow_module
        self.run = run
        self.run_id: str = run.info.run_id
        self.tracking_uri = tracking_uri

    @uninterrupted
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log finite numeric metrics (non-numbers are skipped) under their own names; a character
        MLflow refuses in a name (e.g. in a class name) becomes `_`."""
        clean = {
            re.sub(r"[^A-Za-z0-9_. /:-]", "_", k): float(v)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        }
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    @uninterrupted
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    @uninterrupted
    def log_datasets(self, inputs: Sequence[tuple[str, str, str, str]]) -> None:
        """Log (name, digest, source, context) datasets as the run's inputs (see `dataset_inputs`).

        The digest is DVC's md5 of the data directory, so a run can be matched with `dvc.lock`
        and found with `search_runs(filter_string="dataset.digest = '<md5>'")`.
        """
        from mlflow.data.meta_dataset import MetaDataset

        for name, digest, source, context in inputs:
            dataset = MetaDataset(dvc_dataset_source()(source), name=name, digest=digest)
            self.mlflow.log_input(dataset, context=context)

    @uninterrupted
    def log_artifacts(self, paths: list[Path], artifact_path: str | None = None) -> None:
        """Log report files (directories are logged recursively); missing paths are skipped."""
        for p in map(Path, paths):
            if p.is_dir():
                self.mlflow.log_artifacts(str(p), artifact_path=artifact_path)
            elif p.exists():
                self.mlflow.log_artifact(str(p), artifact_path=artifact_path)

    @uninterrupted
    def log_model(
        self, model: Any, name: str, input_example: Any, metadata: Mapping[str, Any] | None = None
    ) -> Any:
        """Log a torch model with a signature inferred from `input_example` (a numpy array).

        The signature is the example's dtype and shape and the model's output on it, with a free
        batch size: for a classifier, uint8 pixels (-1, C, H, W) in, float32 probabilities
        (-1, K) out, so `mlflow models serve` takes an image's pixels as they are. `metadata`
        (class names, input shape, ...) is stored with the model so that `predict` can use a
        registered model on its own.
        """
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature

        model_cpu = model.to("cpu").eval()
        with torch.inference_mode():
            out = model_cpu(torch.as_tensor(input_example)).numpy()
        signature = infer_signature(input_example, out)
        # Name the requirements instead of letting MLflow infer them: inference imports the model
        # in a subprocess and costs seconds per run. The local build tag (+cu130) is dropped so
        # the pin resolves from PyPI.
        torch_version = torch.__version__.split("+")[0]
        with no_requirement_scan():
            return mlflow.pytorch.log_model(
                model_cpu,
                name=name,
                signature=signature,
                input_example=input_example,
                pip_requirements=[f"torch=={torch_version}", f"mlflow=={mlflow.__version__}"],
                metadata=dict(metadata or {}),
                # MLflow would load the logged model back and predict the example only to warn
                # if that fails (a second a run); the model file was already reloaded and
                # checked (save_verified_model) and the tests serve it (`mlflow models serve`).
                validate_serving_input=False,
            )


def no_requirement_scan() -> contextlib.AbstractContextManager[Any]:
    """Skip MLflow's check that this environment satisfies the logged requirements: they are this
    process's own torch and mlflow versions, so it cannot find a mismatch, and it reads the
    metadata of every installed distribution, a second or more (docs/performance.md). Where
    MLflow has no such check, nothing is skipped."""
    from mlflow.utils import environment

    if not callable(getattr(environment, "warn_dependency_requirement_mismatches", None)):
        return contextlib.nullcontext()
    from unittest import mock

    return mock.patch.object(environment, "warn_dependency_requirement_mismatches", lambda _: None)


@functools.cache
def dvc_dataset_source() -> type:
    """An mlflow DatasetSource for data DVC fetched (built on first use: mlflow loads lazily)."""
    from mlflow.data.dataset_source import DatasetSource

    class DVCDatasetSource(DatasetSource):
        """Where the download stage fetched the data: `data.source` (upstream, synthetic, a mirror)."""

        def __init__(self, uri: str):
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "dvc"

        def load(self) -> str:
            return self.uri

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> DatasetSource:
            return cls(str(raw_source))

        def to_dict(self) -> dict[str, Any]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[Any, Any]) -> DatasetSource:
            return cls(source_dict["uri"])

    return DVCDatasetSource
