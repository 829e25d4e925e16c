"""MLflow tracking: the only code in appliedtorch that imports mlflow, split by concern.

    with stage_run("math-demos", "math_demos", run_params(p, "math"), p.tracking.uri) as run:
        run.log_metrics({"max_error": 1e-12})

- `uri`: the tracking URI resolved and checked, the store reachable, an sqlite schema created once;
- `lineage`: git, DVC, sweep and data tags, DVC's md5 of a directory, the params hash;
- `handle`: `StageRun`, what a stage body logs through;
- `run`: `stage_run` (one stage execution, one MLflow run) and the newest runs for the report;
- `registry`: registration, the `champion` rule, loading a logged model without pickle;
- `sweep`: a sweep's parent run and its children (appliedtorch.sweep).

Every module imports mlflow inside the functions that need it, and the names below are
re-exported for `from appliedtorch.tracking import stage_run`. Nothing that downloads data
imports this package (its stages do not depend on it in dvc.yaml).
"""

from appliedtorch.core.redact import redact
from appliedtorch.tracking.handle import StageRun, database_writes
from appliedtorch.tracking.lineage import (
    data_tags,
    dataset_inputs,
    dvc_md5,
    lineage_tags,
    params_md5,
    sweep_name,
    variant_name,
)
from appliedtorch.tracking.registry import (
    CHAMPION,
    load_logged_model,
    register_trained,
    register_version,
    should_promote,
)
from appliedtorch.tracking.run import (
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_TAGS,
    MODEL_TRAINING,
    SYSTEM_METRICS_INTERVAL,
    latest_runs,
    mark_model_training,
    stage_run,
)
from appliedtorch.tracking.sweep import claim_child, end_parent, open_parent, retire_others
from appliedtorch.tracking.uri import (
    HTTP_DEFAULTS,
    bound_store_retries,
    check_db_server,
    check_reachable,
    check_sqlite_file,
    check_uri,
    ensure_schema,
    find_repo_root,
    repo_root,
    resolve_tracking_uri,
    uri_scheme,
)

__all__ = [
    "CHAMPION",
    "EXPERIMENT_KIND_TAG",
    "EXPERIMENT_TAGS",
    "HTTP_DEFAULTS",
    "MODEL_TRAINING",
    "SYSTEM_METRICS_INTERVAL",
    "StageRun",
    "bound_store_retries",
    "check_db_server",
    "check_reachable",
    "check_sqlite_file",
    "check_uri",
    "claim_child",
    "data_tags",
    "database_writes",
    "dataset_inputs",
    "dvc_md5",
    "end_parent",
    "ensure_schema",
    "find_repo_root",
    "latest_runs",
    "lineage_tags",
    "load_logged_model",
    "mark_model_training",
    "open_parent",
    "params_md5",
    "redact",
    "register_trained",
    "register_version",
    "repo_root",
    "resolve_tracking_uri",
    "retire_others",
    "should_promote",
    "stage_run",
    "sweep_name",
    "uri_scheme",
    "variant_name",
]
