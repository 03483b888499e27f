"""Best run of an architecture, by validation accuracy → registered model `mnist-<model>`.

The alias `champion` moves to the new version only if it beats the current champion's
validation accuracy (or with `force`). Test accuracy is recorded, never used to choose.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_lab import names, tracking
from mnist_lab.analysis.selection import RUN_BUDGETS, parse_rule
from mnist_lab.errors import ConfigError, LabError
from mnist_lab.models import MODELS, TIMM_PREFIX

SELECT_BY = names.BEST_VAL_ACCURACY
VERSION_TAGS = (
    names.BEST_VAL_ACCURACY,
    names.TEST_ACCURACY,
    names.TEST_F1_MACRO,
    names.TEST_LOSS,
    names.TRAIN_TIME_S,
    names.NUM_PARAMS,
)


@dataclass
class Registration:
    name: str
    version: str
    run_id: str
    val_accuracy: float
    champion: bool
    reason: str

    def __str__(self) -> str:
        moved = "is now" if self.champion else "is not"
        return (
            f"registered run {self.run_id} (val_accuracy {self.val_accuracy:.4f}) as "
            f"{self.name} version {self.version}; it {moved} @{tracking.CHAMPION}: {self.reason}"
        )


def val_accuracy(run: tracking.RunRecord) -> float | None:
    """Best validation accuracy of the run (older runs: the last logged val_accuracy)."""
    return run.metrics.get(SELECT_BY, run.metrics.get(names.VAL_ACCURACY))


def best_run(model: str, where: str | None = None) -> tracking.RunRecord:
    """The best run by validation accuracy; with `where` ("inference_ms_per_image<=0.1"),
    the best of those within every budget."""
    if model not in MODELS and not model.startswith(TIMM_PREFIX):
        raise ConfigError(f"unknown model {model!r}; valid models: {', '.join(MODELS)}")
    rule = parse_rule(where, RUN_BUDGETS, flag="--where", objective=False) if where else None
    experiment = tracking.experiment_name()
    runs = tracking.search_runs(
        experiment,
        f"tags.{names.TAG_KIND} = 'train' and tags.{names.TAG_MODEL} = '{model}' "
        "and attributes.status = 'FINISHED'",
    )
    runs = [r for r in runs if val_accuracy(r) is not None]
    if not runs:
        raise tracking.NoRunsError(
            f"no finished {model} train run with a validation accuracy in experiment "
            f"{experiment!r} (tracking store {tracking.tracking_uri()}); train one with "
            f"`mlflow run . -e train -P model={model} --env-manager local`"
        )
    if rule is not None:
        within = [r for r in runs if rule.feasible(r.metrics)]
        if not within:
            raise tracking.NoRunsError(
                f"none of the {len(runs)} finished {model} train runs is within --where "
                f"{rule} (experiment {experiment!r}); relax the budget or train a smaller model"
            )
        runs = within
    return max(runs, key=val_accuracy)


def register(model: str, force: bool = False, where: str | None = None) -> Registration:
    """Register the best `model` run (within the `where` budgets) and move `champion` if it
    earned it (or `force`)."""
    run = best_run(model, where)
    accuracy = val_accuracy(run)
    name = tracking.registered_model_name(model)
    tags = {k: f"{run.metrics[k]:.6g}" for k in VERSION_TAGS if k in run.metrics}
    tags[SELECT_BY] = f"{accuracy:.6g}"
    tags.update({"run_id": run.run_id, names.TAG_MODEL: model, "selected_by": SELECT_BY})
    current = tracking.champion(name)
    if current is not None and current.run_id == run.run_id and not force:
        reason = "that run already is the champion; nothing registered"
        return Registration(name, current.version, run.run_id, accuracy, True, reason)
    version = tracking.register(run.run_id, name, tags)
    if current is None:
        win, reason = True, "there was no champion yet"
    else:
        best = _champion_accuracy(current)
        was = f"version {current.version} (val_accuracy {best:.4f}, run {current.run_id})"
        if force:
            win, reason = True, f"--force given; replaced {was}"
        elif accuracy > best:
            win, reason = True, f"it beats {was}"
        else:
            win, reason = False, f"it does not beat {was}; use --force to move it anyway"
    if win:
        tracking.set_champion(name, version.version)
    return Registration(name, version.version, run.run_id, accuracy, win, reason)


def _champion_accuracy(current: tracking.Version) -> float:
    """From the champion's run when it still exists (exact), else from its version tag."""
    try:
        value = val_accuracy(tracking.get_run(current.run_id)) if current.run_id else None
    except LabError:
        value = None
    return value if value is not None else _float(current.tags.get(SELECT_BY))


def _float(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("-inf")
