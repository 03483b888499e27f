"""Best run of an architecture, by validation accuracy → registered model `mnist-<model>`.

Which run: the configuration (tracking.by_configuration: the same params apart from the seed)
with the best mean validation accuracy over its seeds, so one lucky seed does not carry it
(the winner's curse); then that configuration's best seed. Test accuracy is recorded, never used
to choose.

The alias `champion` moves to the new version only when it beats the champion beyond noise
(PROMOTION_RULE): on the same validation digits, the one-sided exact McNemar test on the digits
exactly one of the two gets right; runs scored on different digits (logged before `split_seed`
or per-digit predictions), the one-sided two-proportion test, said to be unpaired. Otherwise
the version is registered and the alias stays. `force` moves it anyway. The rule, its p-value
and the decision are printed and tagged on the version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mnist_lab import names, tracking
from mnist_lab.analysis.predictions import correct, same_digits
from mnist_lab.analysis.selection import RUN_BUDGETS, parse_rule
from mnist_lab.analysis.statistics import ALPHA, promotion_test, unpaired_promotion_test
from mnist_lab.errors import ConfigError, LabError
from mnist_lab.models import MODELS, TIMM_PREFIX

SELECT_BY = names.BEST_VAL_ACCURACY
VAL_DIGITS = 5000  # the default val_size: runs that do not say theirs
PROMOTION_RULE = (
    f"promote when the challenger beats the champion on validation beyond noise: one-sided "
    f"exact McNemar on the same digits (unpaired two-proportion test on different digits), "
    f"p < {ALPHA}"
)
VERSION_TAGS = (
    names.BEST_VAL_ACCURACY,
    names.TEST_ACCURACY,
    names.TEST_F1_MACRO,
    names.TEST_LOSS,
    names.TRAIN_TIME_S,
    names.NUM_PARAMS,
)
# Tags on every registered version: how the alias decision was made.
TAG_RULE, TAG_TEST, TAG_P_VALUE, TAG_DECISION = (
    "promotion_rule",
    "promotion_test",
    "promotion_p_value",
    "promotion_decision",
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


@dataclass
class Verdict:
    """The challenger against the champion: whether it beats it beyond noise, and why."""

    wins: bool
    test: str
    p_value: float
    detail: str


def val_accuracy(run: tracking.RunRecord) -> float | None:
    """Best validation accuracy of the run (older runs: the last logged val_accuracy)."""
    return run.metrics.get(SELECT_BY, run.metrics.get(names.VAL_ACCURACY))


def best_run(model: str, where: str | None = None) -> tracking.RunRecord:
    """The best seed of the configuration with the best mean validation accuracy; with
    `where` ("inference_ms_per_image<=0.1"), among the runs within every budget."""
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
    configurations = tracking.by_configuration(runs)
    best = max(configurations, key=lambda seeds: sum(map(val_accuracy, seeds)) / len(seeds))
    return max(best, key=val_accuracy)


def register(model: str, force: bool = False, where: str | None = None) -> Registration:
    """Register the best `model` run (within the `where` budgets); move `champion` if it beats
    the champion beyond noise (or with `force`)."""
    run = best_run(model, where)
    accuracy = val_accuracy(run)
    name = tracking.registered_model_name(model)
    current = tracking.champion(name)
    if current is not None and current.run_id == run.run_id and not force:
        reason = "that run already is the champion; nothing registered"
        return Registration(name, current.version, run.run_id, accuracy, True, reason)
    tags = {k: f"{run.metrics[k]:.6g}" for k in VERSION_TAGS if k in run.metrics}
    tags[SELECT_BY] = f"{accuracy:.6g}"
    tags.update({"run_id": run.run_id, names.TAG_MODEL: model, "selected_by": SELECT_BY})
    tags["val_digits"] = str(_val_digits(run))
    if current is None:
        win, reason = True, "there was no champion yet"
        tags |= {TAG_RULE: PROMOTION_RULE, TAG_DECISION: "promoted: no champion yet"}
    else:
        verdict = challenge(run, current)
        was = f"version {current.version} (run {current.run_id})"
        if force:
            win, reason = True, f"--force given; replaced {was} ({verdict.detail})"
        elif verdict.wins:
            win, reason = True, f"it beats {was} beyond noise: {verdict.detail}"
        else:
            win = False
            reason = (
                f"it does not beat {was} beyond noise ({verdict.detail}); the two cannot be "
                "told apart, so the champion stays; use --force to move it anyway"
            )
        decision = ("forced" if force else "promoted") if win else "kept the champion"
        tags |= {
            TAG_RULE: PROMOTION_RULE,
            TAG_TEST: verdict.test,
            TAG_P_VALUE: f"{verdict.p_value:.6g}",
            TAG_DECISION: decision,
        }
    version = tracking.register(run.run_id, name, tags)
    if win:
        tracking.set_champion(name, version.version)
    return Registration(name, version.version, run.run_id, accuracy, win, reason)


def challenge(run: tracking.RunRecord, current: tracking.Version) -> Verdict:
    """Does `run` beat the champion `current` on validation beyond noise (PROMOTION_RULE)?"""
    champion_run = _run_or_none(current.run_id)
    ours = tracking.read_predictions(run.run_id, "val")
    theirs = tracking.read_predictions(current.run_id, "val") if champion_run else None
    if ours is not None and theirs is not None and same_digits([ours, theirs]):
        ours, theirs = (f.sort_values("index", kind="stable") for f in (ours, theirs))
        wins, losses, p_value = promotion_test(correct(ours), correct(theirs))
        detail = (
            f"paired on the same {len(ours)} validation digits: {wins} right only by the "
            f"challenger, {losses} only by the champion; exact McNemar, one-sided p = "
            f"{p_value:.3g}"
        )
        return Verdict(p_value < ALPHA, "McNemar exact, one-sided, paired", p_value, detail)
    if champion_run is not None:
        theirs_accuracy, theirs_digits = val_accuracy(champion_run), _val_digits(champion_run)
    else:  # the champion's run was deleted: its version's tags remember it
        theirs_accuracy = _float(current.tags.get(SELECT_BY))
        theirs_digits = _count(current.tags.get("val_digits"))
    if theirs_accuracy is None or math.isnan(theirs_accuracy):
        return Verdict(True, "none", 0.0, "the champion has no validation accuracy to beat")
    ours_accuracy, ours_digits = val_accuracy(run), _val_digits(run)
    low, high, p_value = unpaired_promotion_test(
        ours_accuracy, ours_digits, theirs_accuracy, theirs_digits
    )
    detail = (
        f"unpaired (the two were not scored on the same validation digits): val_accuracy "
        f"{ours_accuracy:.4f} of {ours_digits} vs {theirs_accuracy:.4f} of {theirs_digits}, "
        f"difference 95 % interval [{low:+.4f}, {high:+.4f}]; two-proportion test, one-sided "
        f"p = {p_value:.3g}"
    )
    return Verdict(p_value < ALPHA, "two-proportion, one-sided, unpaired", p_value, detail)


def _run_or_none(run_id: str | None) -> tracking.RunRecord | None:
    if not run_id:
        return None
    try:
        return tracking.get_run(run_id)
    except LabError:
        return None


def _val_digits(run: tracking.RunRecord) -> int:
    return _count(run.params.get("val_size"))


def _count(value: str | None) -> int:
    """A logged digit count; VAL_DIGITS where none was logged."""
    number = _float(value)
    return VAL_DIGITS if math.isnan(number) else int(number)


def _float(value: str | None) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
