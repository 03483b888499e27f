"""A model saved to a folder while its run's tracking server was away, logged to the run later.

A flavor's `log_model` (mlflow.pyfunc, mlflow.onnx) saves the model and makes it a logged model
of the active run on the server in one call. A run on a tracking server splits the two: the
flavor's `save_model` writes the model folder into the run's spool at once, and `log_saved_model`
makes the logged model from that folder when the spool is sent, as `log_model` would have made
it: a READY logged model named as given, of the run's experiment, with the run's params (and
its user and source tags), an output of the run at step 0 carrying the run's step-0 metrics, its
MLmodel naming the run and the model. Nothing of the model is loaded or run: its folder is
uploaded as it was saved. `runs:/<run_id>/<name>` then loads it like any logged model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.models import Model

# MLflow's system tags that say who made a run, from where: a logged model carries them too.
SOURCE_TAGS = (
    "mlflow.user",
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
)
MLMODEL = "MLmodel"


def log_saved_model(client: Any, run_id: str, folder: Path, name: str, made: Path) -> None:
    """Log the model saved in `folder` as run `run_id`'s logged model `name`, through
    `client` (an MlflowClient). `made` (a file beside `folder`) keeps the id of the logged
    model once it is created, so a call that failed part way and is repeated finishes that
    model rather than making a second one; a model already READY is left as it is."""
    run = client.get_run(run_id)
    if made.exists():
        model = client.get_logged_model(made.read_text().strip())
        if model.status == LoggedModelStatus.READY:
            return
    else:
        model = client.create_logged_model(
            run.info.experiment_id,
            name=name,
            source_run_id=run_id,
            tags={k: v for k, v in run.data.tags.items() if k in SOURCE_TAGS},
            params=dict(run.data.params),
        )
        with made.open("w") as f:  # on disk before anything else is done with the model
            f.write(model.model_id)
            f.flush()
            os.fsync(f.fileno())
    outputs = run.outputs.model_outputs if run.outputs else []
    if model.model_id not in {output.model_id for output in outputs}:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        _link_metrics(client, run, model.model_id)
    mlmodel = Model.load(str(folder / MLMODEL))
    mlmodel.run_id = run_id
    mlmodel.model_id = mlmodel.model_uuid = model.model_id
    mlmodel.artifact_path = model.artifact_location
    mlmodel.save(str(folder / MLMODEL))
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def _link_metrics(client: Any, run: Any, model_id: str) -> None:
    """The run's step-0 metrics, logged again as the model's (what `log_model` does)."""
    linked = [
        Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run.info.run_id)
        for key in run.data.metrics
        for m in client.get_metric_history(run.info.run_id, key)
        if m.step == 0 and m.model_id is None
    ]
    if linked:
        client.log_batch(run.info.run_id, metrics=linked)
