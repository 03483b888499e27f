"""Which runs a comparison shows, grouped by configuration (tracking.by_configuration: the
same model and params apart from the seed): one group, one row, its runs the seeds."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mnist_lab import names, tracking
from mnist_lab.errors import ConfigError
from mnist_lab.models import ARCHITECTURES
from mnist_lab.tracking import NOT_CONFIGURATION, RunRecord, by_configuration


@dataclass
class Group:
    """The runs of one configuration, one per seed, newest first; `label` names its row."""

    label: str
    runs: list[RunRecord]

    @property
    def model(self) -> str:
        return self.runs[0].model

    @property
    def newest(self) -> RunRecord:
        return self.runs[0]

    @property
    def run_ids(self) -> list[str]:
        return [run.run_id for run in self.runs]

    def by_seed(self) -> list[RunRecord]:
        """The runs in seed order, as `train --seeds` trains them: statistics that resample
        the runs then give the same interval as that parent run logged."""
        return sorted(self.runs, key=lambda run: _int(run.params.get("seed")))

    def mean(self, metric: str) -> float:
        """The mean of `metric` over the runs that have it; NaN when none has."""
        values = [run.metrics[metric] for run in self.runs if metric in run.metrics]
        return sum(values) / len(values) if values else math.nan


def _int(value: str | None) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return -1


def check_metric(metric: str) -> str:
    if metric not in names.METRICS:
        raise ConfigError(f"unknown metric {metric!r}; choose one of: {', '.join(names.METRICS)}")
    return metric


def select_groups(
    experiment: str,
    *,
    best_by: str | None = None,
    tags: dict[str, str] | None = None,
    run_ids: Sequence[str] = (),
    include_tuning: bool = False,
) -> list[Group]:
    """The groups to compare: given runs grouped by configuration; else per architecture its
    newest configuration (or its best by `best_by`), in `model_order`, then
    each study's winning configuration with `include_tuning`."""
    if run_ids:
        given = by_configuration([tracking.get_run(run_id) for run_id in run_ids])
        return _label(sorted(given, key=_table_order))
    query = [f"tags.{names.TAG_KIND} = 'train'", "attributes.status = 'FINISHED'"]
    query += [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
    runs = tracking.search_runs(experiment, " and ".join(query))
    plain = [r for r in runs if names.TAG_STUDY_NAME not in r.tags]
    chosen = [_pick(by_configuration(same), best_by) for same in _split(plain, _model)]
    chosen.sort(key=_table_order)
    groups = _label(chosen)
    if include_tuning:
        retrained = [r for r in runs if names.TAG_STUDY_NAME in r.tags]
        for same in _split(retrained, lambda r: r.tags[names.TAG_STUDY_NAME]):
            winner = _pick(by_configuration(same), best_by or names.BEST_VAL_ACCURACY)
            study = winner[0].tags[names.TAG_STUDY_NAME]
            groups.append(Group(f"{winner[0].model} (tuned: {study})", winner))
    return groups


def _model(run: RunRecord) -> str:
    return run.model


def _split(runs: list[RunRecord], key: Callable[[RunRecord], str]) -> list[list[RunRecord]]:
    parts: dict[str, list[RunRecord]] = {}
    for run in runs:
        parts.setdefault(key(run), []).append(run)
    return list(parts.values())


def model_order(model: str) -> int:
    """Where `model` sorts: the architecture table's order, any other model (timm:) after."""
    order = list(ARCHITECTURES)
    return order.index(model) if model in order else len(order)


def _table_order(runs: list[RunRecord]) -> tuple[int, str]:
    return (model_order(runs[0].model), runs[0].model)


def _pick(configurations: list[list[RunRecord]], metric: str | None) -> list[RunRecord]:
    """The newest configuration (they come newest first), or the one with the best mean of
    `metric` among those having it: a configuration is judged by all its seeds, so one lucky
    seed does not carry it."""
    if metric is None:
        return configurations[0]
    having = [g for g in configurations if any(metric in r.metrics for r in g)] or configurations
    sign = 1 if names.METRICS[metric].direction == names.MAXIMIZE else -1
    return max(having, key=lambda g: sign * Group("", g).mean(metric))


def _label(configurations: list[list[RunRecord]]) -> list[Group]:
    return [Group(group_label(runs, configurations), runs) for runs in configurations]


def group_label(
    runs: list[RunRecord], configurations: list[list[RunRecord]], always_config: bool = False
) -> str:
    """A row's name: its model; where the model has several rows (or `always_config`), its
    config file too (`cnn (cnn_fast.yaml)`), and where that still leaves two alike, its newest
    run id's first 8 characters."""
    model, config = runs[0].model, runs[0].tags.get(names.TAG_CONFIG)
    same_model = [g for g in configurations if g[0].model == model]
    if len(same_model) == 1 and not (always_config and config):
        return model
    same_config = [g for g in same_model if g[0].tags.get(names.TAG_CONFIG) == config]
    if config and len(same_config) == 1:
        return f"{model} ({config})"
    differing = _differing_params(runs[0], [g[0] for g in same_config])
    if differing:
        shown = ", ".join(f"{k}={runs[0].params.get(k, '–')}" for k in differing[:3])
        return f"{model} ({config + ': ' if config else ''}{shown})"
    return f"{model} ({runs[0].run_id[:8]})"


def _differing_params(run: RunRecord, others: list[RunRecord]) -> list[str]:
    """The params (configuration only) on which `others` do not all agree with `run`."""
    keys = sorted({k for other in others for k in other.params} - NOT_CONFIGURATION)
    return [k for k in keys if any(o.params.get(k) != run.params.get(k) for o in others)]


def config_overrides(run: RunRecord) -> dict[str, str] | None:
    """The run's settings that differ from those of its config file (tag `config`) read now:
    what its command line changed. None where the run names no file of experiments/."""
    from mnist_lab.config import EXPERIMENTS_DIR, load_config

    config = run.tags.get(names.TAG_CONFIG)
    if not config or not (EXPERIMENTS_DIR / config).is_file():
        return None
    try:
        defaults = load_config(run.model, config_file=EXPERIMENTS_DIR / config).to_params()
    except ConfigError:
        return None
    return {
        k: v
        for k, v in sorted(run.params.items())
        if k not in NOT_CONFIGURATION and k in defaults and v != str(defaults[k])
    }
