"""Optuna plumbing: storage URLs, samplers, pruners and the study a search space belongs to.

Nothing here trains or logs to MLflow; `tuning` puts these together.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from mnist_lab import names
from mnist_lab.database import open_retrying_collisions, redact
from mnist_lab.errors import ConfigError, LabError
from mnist_lab.tuning.space import SearchSpace

# Heartbeat, retry and metric names are "experimental" in Optuna; we rely on them deliberately.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

JOURNAL_PREFIX = "journal:"
ATTR_FINGERPRINT = "space_fingerprint"
ATTR_FAILURE = "failure_reason"  # user attr of a trial that failed by itself (not interrupted)
ATTR_OVERRIDES = "overrides"  # user attr: the config settings the trial suggested
MAX_RETRY = 3


def open_storage(url: str, heartbeat_interval: int = 60) -> optuna.storages.BaseStorage:
    """An RDB URL (sqlite:///, postgresql://, mysql://) or `journal:<file>` (a journal log).

    On RDB storages each running trial writes a heartbeat; one silent for two intervals (its
    worker was killed) is marked FAIL by the next worker and re-queued with the same parameters
    by `RetryHeartbeatStaleTrialCallback` (Optuna 5's name for `RetryFailedTrialCallback`).
    Journal storages have no heartbeat in Optuna.
    """
    try:
        if url.startswith(JOURNAL_PREFIX):
            path = Path(url.removeprefix(JOURNAL_PREFIX).removeprefix("//"))
            if not path.parent.is_dir():
                raise FileNotFoundError(f"folder {path.parent} does not exist")
            return JournalStorage(JournalFileBackend(str(path)))
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # Several workers write to one file: wait for the lock rather than fail at once.
            engine_kwargs["connect_args"] = {"timeout": 60}
        # Two machines creating Optuna's tables in one fresh database at once: by the next
        # attempt the winner's tables exist.
        return open_retrying_collisions(
            lambda: RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=2 * heartbeat_interval,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRY
                ),
            )
        )
    except Exception as err:
        reason = " ".join(str(err).split())[:500] or type(err).__name__
        raise LabError(
            f"cannot open the Optuna storage {redact(url)}: {reason}. Give --storage as an "
            "SQLAlchemy URL (sqlite:///optuna.db, postgresql://user@host/db) or journal:<file>"
        ) from None


def make_sampler(kind: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE (the default), random search or NSGA-II; all three take several objectives
    (TPE then is Optuna's MOTPE).

    TPE's first trials are random: a quarter of the study, at least 3 and at most 10. The
    constant liar keeps parallel workers from proposing the same point while trials run;
    `group` lets it model conditional parameters (heads only where dim is chosen) properly.
    NSGA-II evolves generations of a quarter of the study (8 to 50 trials; the first is
    random): it needs more trials than TPE to pay off.
    """
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        population = min(50, max(8, n_trials // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    return optuna.samplers.TPESampler(
        seed=seed,
        n_startup_trials=min(10, max(3, n_trials // 4)),
        multivariate=True,
        group=True,
        constant_liar=True,
    )


def make_pruner(kind: str, space: SearchSpace, epochs: int | None) -> optuna.pruners.BasePruner:
    """Hyperband over epochs (default), median, or none; `pruner:` in the space file tunes them.

    `epochs` is the trials' epoch budget (None when the space tunes it: Hyperband then takes
    the budget from the first finished trial).
    """
    settings = dict(space.pruner.get(kind, {}))
    try:
        if kind == "hyperband":
            defaults = {"min_resource": 1, "max_resource": epochs or "auto", "reduction_factor": 3}
            return optuna.pruners.HyperbandPruner(**{**defaults, **settings})
        if kind == "median":
            defaults = {"n_startup_trials": 5, "n_warmup_steps": 1}
            return optuna.pruners.MedianPruner(**{**defaults, **settings})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{space.path}: pruner.{kind}: {err}") from None
    return optuna.pruners.NopPruner()


def open_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    space: SearchSpace,
    objective: dict[str, Any],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    objectives: Sequence[str] = (names.VAL_ACCURACY,),
    directions: Sequence[str] = ("maximize",),
) -> optuna.Study:
    """Create study `name` or continue it, but only with the space, data and objectives it
    started with.

    The space's fingerprint (model, fixed settings, distributions, `objective` data settings,
    which hold the objectives when they are not val_accuracy alone) is stored in the study;
    another one under the same name is an error, never a mixed study.
    """
    fingerprint = space.fingerprint(objective)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=list(directions),
        load_if_exists=True,
        sampler=sampler,
        pruner=pruner,
    )
    found = study.user_attrs.get(ATTR_FINGERPRINT)
    if found is None and study.get_trials(deepcopy=False):
        raise ConfigError(
            f"study {name!r} already exists and was not started by `mnist_lab tune`; "
            "pick another --study-name"
        )
    if found is None:
        study.set_metric_names(list(objectives))  # optuna-dashboard's axis labels
        study.set_user_attr(ATTR_FINGERPRINT, fingerprint)
        study.set_user_attr("model", space.model)
        study.set_user_attr("space_file", str(space.path))
        study.set_user_attr("objective_data", objective)
    elif found != fingerprint:
        raise ConfigError(
            f"study {name!r} was started with another search space or data (model "
            f"{study.user_attrs.get('model')!r}, {study.user_attrs.get('objective_data')}, "
            f"space {study.user_attrs.get('space_file')}); it differs from {space.path} with "
            f"{objective}. Pass a new --study-name (e.g. {name}-2) or restore the old space"
        )
    return study


def counted(trial: FrozenTrial) -> bool:
    """Does `trial` use up the study's budget? Interrupted or killed trials do not."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and ATTR_FAILURE in trial.user_attrs


def trials_done(study: optuna.Study) -> int:
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def completed_user_attrs(storage_url: str, name: str, key: str) -> list[Any]:
    """The user attribute `key` of each completed trial of study `name`, in trial order."""
    study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [trial.user_attrs.get(key) for trial in complete]


def state_counts(study: optuna.Study) -> dict[TrialState, int]:
    counts = dict.fromkeys(TrialState, 0)
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts


class StopWhenDone:
    """Study callback: stop once the study as a whole (every worker, every machine) holds
    `n_trials` counted trials."""

    def __init__(self, n_trials: int) -> None:
        self.n_trials = n_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trials_done(study) >= self.n_trials:
            study.stop()
