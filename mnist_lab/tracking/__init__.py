"""The only code that talks to MLflow: writing runs, reading them back, the logged model.

Use it as one module, `from mnist_lab import tracking`, then `tracking.run(...)`,
`tracking.log_metrics(...)`, `tracking.search_runs(...)`. Inside: `runs` (a run's lifecycle,
params, metrics, tags, artifacts, tuning trials' runs), `epoch_logger` (the engine listener that
logs epochs and checkpoints), `pyfunc` (logging the model, whose loader is mnist_lab.inference, and
checking one before it loads), `onnx` (the same model as ONNX),
`query` (reading runs back), `registry` (registered models and the `champion` alias),
`liveness` (the process behind a RUNNING run, its heartbeat, and ending runs whose process is
gone) and `store` (opening the store: a fresh SQLite store's tables made one process at a
time). It may import everything below it (engine, analysis, models, data, config); nothing
below imports it.
"""

from mnist_lab.tracking.epoch_logger import (
    EpochLogger,
    download_checkpoint,
    has_checkpoint,
    reopen_for_resume,
)
from mnist_lab.tracking.liveness import StaleRun, end_stale, stale_runs, sweep_stale_runs
from mnist_lab.tracking.onnx import load_onnx_model, log_onnx_model, onnx_model_uri
from mnist_lab.tracking.pyfunc import log_model, log_torch_model
from mnist_lab.tracking.query import (
    NoRunsError,
    RunRecord,
    classification_report,
    experiment_name,
    get_run,
    job_run,
    metric_history,
    read_json_artifact,
    search_runs,
    tracking_uri,
)
from mnist_lab.tracking.registry import (
    CHAMPION,
    Version,
    champion,
    load_model,
    model_source,
    register,
    registered_model_name,
    run_model_uri,
    set_champion,
    source_run_id,
)
from mnist_lab.tracking.runs import (
    active_experiment_id,
    active_run_id,
    child_run_tags,
    fail_launcher_run,
    find_run,
    git_commit,
    kill_orphaned_run,
    log_artifact,
    log_datasets,
    log_dict,
    log_failed_run,
    log_figure,
    log_metrics,
    log_params,
    mark_trial_run,
    run,
    run_tags,
    set_run_tags,
    set_tags,
    use_default_experiment,
)
from mnist_lab.tracking.store import open_store

__all__ = [
    "CHAMPION",
    "EpochLogger",
    "NoRunsError",
    "RunRecord",
    "StaleRun",
    "Version",
    "active_experiment_id",
    "active_run_id",
    "champion",
    "child_run_tags",
    "classification_report",
    "download_checkpoint",
    "end_stale",
    "experiment_name",
    "fail_launcher_run",
    "find_run",
    "get_run",
    "git_commit",
    "has_checkpoint",
    "job_run",
    "kill_orphaned_run",
    "load_model",
    "load_onnx_model",
    "log_artifact",
    "log_datasets",
    "log_dict",
    "log_failed_run",
    "log_figure",
    "log_metrics",
    "log_model",
    "log_onnx_model",
    "log_params",
    "log_torch_model",
    "mark_trial_run",
    "metric_history",
    "model_source",
    "onnx_model_uri",
    "open_store",
    "read_json_artifact",
    "register",
    "registered_model_name",
    "reopen_for_resume",
    "run",
    "run_model_uri",
    "run_tags",
    "search_runs",
    "set_champion",
    "set_run_tags",
    "set_tags",
    "source_run_id",
    "stale_runs",
    "sweep_stale_runs",
    "tracking_uri",
    "use_default_experiment",
]
