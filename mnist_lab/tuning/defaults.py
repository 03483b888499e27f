"""The defaults as trial 0: a study first trains `experiments/<model>.yaml`'s values, so it
never ends below the configuration it was meant to improve, and says by how much it beat it.

The new study's first trial is enqueued with every default that lies inside the space (the
sampler chooses the others; the trial's user attrs list them). Several `tune` processes
starting one study together enqueue it once: the one that wins the claim `defaults_trial`.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_lab.config import experiment_file, load_config
from mnist_lab.tuning.claim import claim
from mnist_lab.tuning.space import SearchSpace

log = logging.getLogger(__name__)

ATTR_DEFAULTS = "defaults_trial"  # True on the trial enqueued with the defaults
ATTR_OUTSIDE = "defaults_outside_space"  # {name: default} the sampler chose instead
ATTR_FIXED = "fixed_over_defaults"  # {name: value} of `fixed:` that differ from the defaults
CLAIM = "defaults_trial"


def model_defaults(model: str) -> dict[str, Any]:
    """Every setting and model option of `experiments/<model>.yaml` (with the code defaults)."""
    return load_config(model).to_params()


def enqueue_defaults(
    url: str,
    storage: optuna.storages.BaseStorage,
    study: optuna.Study,
    space: SearchSpace,
    claimant: dict[str, Any],
) -> dict[str, Any] | None:
    """Enqueue the defaults as the first trial of a study that has none yet; the enqueued
    Optuna params, or None (a continued study, another process enqueued them, or no default
    lies inside the space)."""
    if study.get_trials(deepcopy=False):
        return None  # a continued study: its first trial was chosen when it started
    defaults = model_defaults(space.model)
    inside, outside = space.defaults_params(defaults)
    if not inside:
        log.warning("no default of %s lies inside %s: no defaults trial", space.model, space.path)
        return None
    if claim(url, storage, study, CLAIM, claimant) != claimant:
        return None
    attrs = {
        ATTR_DEFAULTS: True,
        ATTR_OUTSIDE: {k: _jsonable(v) for k, v in outside.items()},
        ATTR_FIXED: {k: _jsonable(v) for k, v in space.fixed_over_defaults(defaults).items()},
    }
    study.enqueue_trial(inside, user_attrs=attrs)
    log.info(
        "trial 0: the defaults of experiments/%s %s%s",
        experiment_file(space.model).name,
        inside,
        f"; outside the space, chosen by the sampler: {outside}" if outside else "",
    )
    return inside


def defaults_trial(study: optuna.Study) -> FrozenTrial | None:
    """The first finished (COMPLETE) trial that ran the defaults, if any."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.user_attrs.get(ATTR_DEFAULTS):
            return trial
    return None


def _jsonable(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)
