"""A finished study's winners: the best trial, the Pareto-optimal trials, or the one a rule
picks; how each compares with the defaults (trial 0); and what the parent run records of them.

    single objective   winner = the best trial            (or the --pick rule's)
    several            winners = the Pareto-optimal trials (or the --pick rule's one)

The parent run gets, for a multi-objective study, `plots/pareto_front.png` and the table
`pareto_trials.json` (each Pareto trial's values, its gain on the defaults, its settings), and
each trial's run a `pareto_optimal` tag; for every study the `vs_defaults` tag and, where one
trial won, `defaults_<objective>` and `<objective>_gain_over_defaults` metrics.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnist_lab import names, tracking
from mnist_lab.analysis.pareto_figure import pareto_figure
from mnist_lab.analysis.selection import gain
from mnist_lab.analysis.statistics import ALPHA, compare_accuracies, wilson_interval
from mnist_lab.tuning.defaults import defaults_trial
from mnist_lab.tuning.objectives import Objectives
from mnist_lab.tuning.study import ATTR_OVERRIDES

ATTR_METRICS = "metrics"  # user attr: every objective's value the trial measured
ATTR_RUN_ID = "run_id"  # user attr: the trial's MLflow run
ACCURACIES = (names.VAL_ACCURACY, names.VAL_ROBUST_ACCURACY)


@dataclass
class Winner:
    trial: int
    overrides: dict[str, Any]
    metrics: dict[str, float]
    gains: dict[str, float] = field(default_factory=dict)  # on the defaults; > 0: better
    run_id: str | None = None


@dataclass
class Choice:
    winners: list[Winner]  # what --retrain trains
    pareto: list[int]  # Pareto-optimal trial numbers (the best trial's, for one objective)
    picked: int | None = None
    defaults: Winner | None = None  # the defaults' trial, when it finished
    note: str = ""  # why there is no winner (no trial within the pick's budgets)
    vs_defaults: str = ""


def metrics_of(trial: FrozenTrial) -> dict[str, float]:
    """What the finished trial measured: every objective's value, and more."""
    return dict(trial.user_attrs[ATTR_METRICS])


def _winner(trial: FrozenTrial, objectives: Objectives, base: Winner | None) -> Winner:
    metrics = metrics_of(trial)
    gains = {}
    if base is not None:
        gains = {o: gain(base.metrics[o], metrics[o], o) for o in objectives.chosen}
    return Winner(
        trial.number,
        trial.user_attrs.get(ATTR_OVERRIDES, {}),
        metrics,
        gains,
        trial.user_attrs.get(ATTR_RUN_ID),
    )


def choose(study: optuna.Study, objectives: Objectives) -> Choice:
    """The study's winners. Call it once a trial completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    base_trial = defaults_trial(study)
    base = _winner(base_trial, objectives, None) if base_trial is not None else None
    # With constraints (--constraint, --pick's budgets), Optuna's best trial(s) are within
    # every budget: none may be.
    front: list[FrozenTrial] = []
    if objectives.multi:
        front = sorted(study.best_trials, key=lambda t: t.number)
    else:
        with contextlib.suppress(ValueError):  # no trial within the budgets
            front = [study.best_trial]
    pareto = [t.number for t in front]
    choice = Choice([], pareto, defaults=base)
    if objectives.pick is not None:
        index = objectives.pick.best([metrics_of(t) for t in complete])
        if index is None:
            choice.note = (
                f"no finished trial is within --pick {objectives.pick} (of {len(complete)}); "
                "nothing to retrain: relax the budget or run more trials"
            )
        else:
            choice.picked = complete[index].number
            choice.winners = [_winner(complete[index], objectives, base)]
    elif not front:
        budgets = ", ".join(map(str, objectives.constraints))
        choice.note = (
            f"no finished trial is within --constraint {budgets} (of {len(complete)}); nothing "
            "to retrain: relax the budget or run more trials"
        )
    else:
        choice.winners = [_winner(t, objectives, base) for t in front]
    choice.vs_defaults = describe_vs_defaults(choice, objectives)
    return choice


def describe_vs_defaults(choice: Choice, objectives: Objectives) -> str:
    """One line: by how much each winner beat (or missed) the defaults, objective by objective."""
    base = choice.defaults
    if base is None:
        return (
            "no defaults trial finished (trial 0 failed, or no default lies inside the space): "
            "nothing to compare with"
        )
    if not choice.winners:
        return f"no winner; the defaults (trial {base.trial}): {_values(base, objectives)}"
    parts = []
    for winner in choice.winners:
        if winner.trial == base.trial:
            parts.append(f"trial {winner.trial} is the defaults: no trial beat them")
            continue
        changes = ", ".join(
            f"{o} {_fmt(o, winner.metrics[o])} vs {_fmt(o, base.metrics[o])} "
            f"({_change(o, base.metrics[o], winner.metrics[o])})"
            for o in objectives.chosen
        )
        parts.append(f"trial {winner.trial} vs the defaults (trial {base.trial}): {changes}")
    return "; ".join(parts)


def _values(winner: Winner, objectives: Objectives) -> str:
    return ", ".join(f"{o} {_fmt(o, winner.metrics[o])}" for o in objectives.chosen)


def _fmt(metric: str, value: float) -> str:
    if metric in ACCURACIES:
        return f"{100 * value:.2f} %"
    if metric in (names.NUM_PARAMS, names.TRAIN_FLOPS_PER_IMAGE):
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _change(metric: str, before: float, after: float) -> str:
    """'+0.36 pp, better' / '-21 %, better' / 'the same'."""
    if after == before:
        return "the same"
    verdict = "better" if gain(before, after, metric) > 0 else "worse"
    if metric in ACCURACIES:
        return f"{100 * (after - before):+.2f} pp, {verdict}"
    if before:
        return f"{100 * (after - before) / abs(before):+.1f} %, {verdict}"
    return f"{after - before:+.4g}, {verdict}"


def pareto_rows(
    study: optuna.Study, objectives: Objectives, choice: Choice
) -> list[dict[str, Any]]:
    """The table of the Pareto-optimal trials: values, gains on the defaults, settings."""
    base = choice.defaults
    rows = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial.number not in choice.pareto:
            continue
        winner = _winner(trial, objectives, base)
        row: dict[str, Any] = {"trial": trial.number}
        row |= {o: winner.metrics[o] for o in objectives.chosen}
        row |= {f"{o}_vs_defaults": winner.gains.get(o, math.nan) for o in objectives.chosen}
        row |= {
            "defaults": base is not None and trial.number == base.trial,
            "picked": trial.number == choice.picked,
            "overrides": json.dumps(winner.overrides, sort_keys=True),
            "run_id": winner.run_id or "",
        }
        rows.append(row)
    return rows


def log_choice(
    study: optuna.Study, objectives: Objectives, choice: Choice, study_name: str
) -> None:
    """Record the choice on the active (parent) run and tag the trials' runs."""
    tags = {
        names.TAG_OBJECTIVES: ",".join(objectives.chosen),
        names.TAG_VS_DEFAULTS: choice.vs_defaults,
    }
    if objectives.pick is not None:
        tags[names.TAG_PICK] = str(objectives.pick)
        tags[names.TAG_PICKED_TRIAL] = "none" if choice.picked is None else str(choice.picked)
    metrics = {}
    if choice.defaults is not None:
        metrics |= {names.defaults_metric(o): choice.defaults.metrics[o] for o in objectives.chosen}
        if len(choice.winners) == 1:
            metrics |= {
                names.gain_over_defaults_metric(o): v for o, v in choice.winners[0].gains.items()
            }
    if objectives.multi:
        tags[names.TAG_PARETO_TRIALS] = ",".join(map(str, choice.pareto))
        tracking.log_table(pareto_rows(study, objectives, choice), names.PARETO_TRIALS_FILE)
        figure = front_figure(study, objectives, choice, study_name)
        tracking.log_figure(figure, names.PLOT_PARETO_FRONT)
        _tag_trial_runs(study, choice)
    tracking.set_tags(tags)
    if metrics:
        tracking.log_metrics(metrics)


def front_figure(study: optuna.Study, objectives: Objectives, choice: Choice, study_name: str):
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    numbers = [t.number for t in complete]
    measured = [metrics_of(t) for t in complete]
    points = [objectives.values(m) for m in measured]
    front = [numbers.index(n) for n in choice.pareto if n in numbers]
    defaults = numbers.index(choice.defaults.trial) if choice.defaults else None
    beyond = None
    if defaults is not None:
        beyond = [beats_beyond_noise(m, measured[defaults], objectives.chosen) for m in measured]
    return pareto_figure(
        points,
        objectives.chosen,
        front,
        [str(n) for n in numbers],
        defaults=defaults,
        picked=numbers.index(choice.picked) if choice.picked is not None else None,
        constraints=objectives.constraints,
        title=f"Pareto front of study {study_name}",
        intervals=[trial_intervals(m, objectives.chosen) for m in measured],
        beyond_noise=beyond,
    )


def trial_intervals(
    metrics: dict[str, float], objectives: Sequence[str]
) -> list[tuple[float, float] | None]:
    """Each objective's noise for one trial (one seed): val_accuracy's Wilson interval over the
    validation digits (digit noise only), the latency's range over its timed passes; None
    where the trial measured no spread (counts such as num_params have none)."""
    out: list[tuple[float, float] | None] = []
    for name in objectives:
        value, digits = metrics.get(name), metrics.get(names.VAL_DIGITS)
        slowest = metrics.get(names.INFERENCE_MS_PER_IMAGE_SLOWEST)
        if name == names.VAL_ACCURACY and value is not None and digits:
            out.append(wilson_interval(round(value * digits), int(digits)))
        elif name == names.INFERENCE_MS_PER_IMAGE and value is not None and slowest is not None:
            out.append((value, slowest))
        else:
            out.append(None)
    return out


def beats_beyond_noise(
    metrics: dict[str, float], defaults: dict[str, float], objectives: Sequence[str]
) -> bool:
    """Better than the defaults beyond noise in one objective, worse beyond noise in none:
    val_accuracy by Newcombe's two-proportion test (digits only: one seed each), latency by
    timed ranges that do not overlap. Objectives without a measured noise are not judged."""
    better = worse = False
    for name in objectives:
        ours, theirs = trial_intervals(metrics, [name])[0], trial_intervals(defaults, [name])[0]
        if ours is None or theirs is None:
            continue
        if name == names.VAL_ACCURACY:
            digits = (int(metrics[names.VAL_DIGITS]), int(defaults[names.VAL_DIGITS]))
            result = compare_accuracies([metrics[name]], [defaults[name]], *digits)
            better |= result.p_value < ALPHA and result.difference > 0
            worse |= result.p_value < ALPHA and result.difference < 0
        else:  # lower is better: ranges of timed passes
            better |= ours[1] < theirs[0]
            worse |= theirs[1] < ours[0]
    return better and not worse


def _tag_trial_runs(study: optuna.Study, choice: Choice) -> None:
    """`pareto_optimal` true/false on every finished trial's run: a trial a later one
    dominates loses it."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = trial.user_attrs.get(ATTR_RUN_ID)
        if run_id:
            optimal = "true" if trial.number in choice.pareto else "false"
            tracking.set_run_tags(run_id, {names.TAG_PARETO_OPTIMAL: optimal})
