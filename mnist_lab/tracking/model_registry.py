"""The model registry: registered models `mnist-<model>`, their versions and the `champion`
alias, and loading a model by URI. Nothing here trains or logs metrics."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from mnist_lab import names
from mnist_lab.errors import LabError
from mnist_lab.tracking.pyfunc import Digests, verify_folder
from mnist_lab.tracking.query import get_run, tracking_uri
from mnist_lab.tracking.store import open_store, store_client

CHAMPION = "champion"


# The model registry.


def registered_model_name(model: str) -> str:
    return f"mnist-{model}"


@dataclass
class Version:
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]


def champion(name: str) -> Version | None:
    """The version the alias `champion` of registered model `name` points to, if any."""
    client = store_client()
    try:
        found = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return Version(found.name, str(found.version), found.run_id, dict(found.tags))


def register(run_id: str, name: str, tags: dict[str, str]) -> Version:
    """Register the run's `model` as a new version of `name` (created if new), with `tags`."""
    client = store_client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="MNIST digit classifier (mnist-lab)")
    version = mlflow.register_model(model_source(run_id), name, tags=tags)
    return Version(name, str(version.version), run_id, tags)


def model_source(run_id: str) -> str:
    """`models:/<id>` of the run's logged `model` (MLflow 3 keeps it outside the run's
    artifacts); `runs:/<run>/model` for runs logged before LoggedModels existed."""
    client = store_client()
    outputs = client.get_run(run_id).outputs
    for output in outputs.model_outputs if outputs else ():
        try:
            logged = client.get_logged_model(output.model_id)
        except MlflowException:  # deleted since
            continue
        if logged.name == names.MODEL_ARTIFACT:
            return f"models:/{output.model_id}"
    return f"runs:/{run_id}/{names.MODEL_ARTIFACT}"


def set_champion(name: str, version: str) -> None:
    store_client().set_registered_model_alias(name, CHAMPION, version)


def load_model(uri: str) -> Any:
    """The pyfunc at `uri` (`models:/mnist-cnn@champion`, `runs:/<id>/model`, a path), checked
    before MLflow loads it: an MLmodel this mnist-lab wrote (pyfunc.verify_folder), weights
    and code whose sha256 are the ones the logging run recorded."""
    _open_store_of(uri)
    try:
        folder = mlflow.artifacts.download_artifacts(uri)
    except Exception as err:  # MlflowException, OSError, ...: all mean "cannot load that"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LabError(
            f"model URI {uri!r} does not resolve in the tracking store {tracking_uri()}: "
            f"{first}; use e.g. models:/mnist-cnn@champion (after `register`) or runs:/<id>/model"
        ) from None
    digests = verify_folder(folder)
    _check_recorded_digests(uri, digests)
    path = list(sys.path)
    try:
        return mlflow.pyfunc.load_model(folder)
    finally:
        # MLflow puts the model's code/ first on sys.path. This process already runs the
        # mnist_lab installed here; left there, the model's partial copy would shadow it for
        # every process this one starts later (a spawned tuning worker, a torchrun rank).
        sys.path[:] = path


def _check_recorded_digests(uri: str, digests: Digests) -> None:
    """The weights' and the code's sha256 against the tags the run wrote when logging (a
    folder whose run is not in this store has none)."""
    info = _model_info(uri)
    if info is None or not info.run_id:
        return
    run_id, artifact = info.run_id, info.name or names.MODEL_ARTIFACT
    try:
        tags = store_client().get_run(run_id).data.tags
    except MlflowException:
        return
    for what, digest, tag in (
        ("weights", digests.weights, names.model_sha256_tag(artifact)),
        ("code", digests.code, names.model_code_sha256_tag(artifact)),
    ):
        recorded = tags.get(tag)
        if recorded and recorded != digest:
            raise LabError(
                f"model {uri}: its {what} (sha256 {digest[:12]}…) are not the ones run "
                f"{run_id} logged ({recorded[:12]}…): the artifacts were changed after logging. "
                "Do not load it; log the model again from its run"
            )


def run_model_uri(run_id: str) -> str:
    """The URI of run `run_id`'s logged `model`, or a LabError naming the run and why not."""
    run = get_run(run_id)  # a LabError when there is no such run
    uri = model_source(run_id)
    if uri.startswith("models:/"):
        return uri
    try:  # a run from before LoggedModels keeps the model among its artifacts
        store_client().list_artifacts(run_id, names.MODEL_ARTIFACT)[0]
    except (IndexError, MlflowException, OSError):
        kind = run.tags.get(names.TAG_KIND, "?")
        raise LabError(
            f"run {run_id} (kind={kind}, {run.status}) has no logged model "
            f"{names.MODEL_ARTIFACT!r}: tuning trials and runs that stopped before their test "
            "evaluation log none; give a finished train run, or --model-uri"
        ) from None
    return uri


def source_run_id(uri: str) -> str | None:
    """The run that logged the model at `uri` (runs:/, models:/<id>, models:/<name>@alias, or
    a folder, whose MLmodel names it)."""
    info = _model_info(uri)
    return info.run_id if info else None


def _model_info(uri: str) -> ModelInfo | None:
    """MLflow's record of the model at `uri`; None for a folder without an MLmodel, or a URI
    load_model rejects in its own words."""
    open_store()  # MLflow reads the logged model's record from the store, for a folder too
    try:
        return mlflow.models.get_model_info(uri)
    except Exception:
        return None


def _open_store_of(uri: str) -> None:
    """Open the tracking store where `uri` names a model in it; fetching a folder needs none."""
    if uri.split(":", 1)[0] in ("models", "runs"):
        open_store()
