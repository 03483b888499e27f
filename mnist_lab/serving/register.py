"""Best run of an architecture, by validation accuracy → registered model `mnist-<model>`.

Which run: the configuration (tracking.by_configuration: the same params apart from the seed)
with the best mean validation accuracy over its seeds, so one lucky seed does not carry it;
then that configuration's best seed, whose checkpoint is its best epoch on validation. Every
choice is made on validation digits.

So the promotion is tested where nothing was chosen (PROMOTION_RULE): on the test digits, which
no choice touched (not training, not early stopping, not the configuration, seed or epoch), the
one-sided exact McNemar test of the two models on the digits exactly one of them gets right.
Tested on the validation digits it was chosen by, the best of 10 configurations × 3 seeds
"beats" an equal champion about a quarter of the time (`measure calibration`). The alias
`champion` moves only when the challenger is better beyond noise; the outcome is said as
better, a tie, worse, or why no test could be run (the champion's run is gone, a side logged no
test predictions, the two were scored on different digits), and the alias then stays. `force`
moves it anyway. The rule, the test, its p-value (only when a test ran) and the decision are
printed and tagged on the version.
"""

from __future__ import annotations

from dataclasses import dataclass

from mnist_lab import names, tracking
from mnist_lab.analysis.predictions import correct, same_digits
from mnist_lab.analysis.selection import parse_rule
from mnist_lab.analysis.statistics import ALPHA, promotion_test
from mnist_lab.errors import LabError
from mnist_lab.models import architecture

SELECT_BY = names.BEST_VAL_ACCURACY
PROMOTION_RULE = (
    f"promote when the challenger beats the champion beyond noise on the test digits, which no "
    f"choice touched (the run, its seed and its epoch are chosen on validation): one-sided exact "
    f"McNemar on the same digits, p < {ALPHA}"
)
PROMOTION_TEST = "McNemar exact, one-sided, paired, test digits"
# Tags on every registered version: how the alias decision was made.
TAG_RULE, TAG_TEST, TAG_P_VALUE, TAG_OUTCOME, TAG_DECISION = (
    "promotion_rule",
    "promotion_test",
    "promotion_p_value",
    "promotion_outcome",
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
    """The challenger against the champion: `outcome` "better", "tie", "worse" or "no test";
    the test and its one-sided p-value of "the challenger is no better" when one ran."""

    outcome: str
    detail: str
    test: str | None = None
    p_value: float | None = None


def val_accuracy(run: tracking.RunRecord) -> float | None:
    """Best validation accuracy of the run (older runs: the last logged val_accuracy)."""
    return run.metrics.get(SELECT_BY, run.metrics.get(names.VAL_ACCURACY))


def best_run(model: str, where: str | None = None) -> tracking.RunRecord:
    """The best seed of the configuration with the best mean validation accuracy; with
    `where` ("inference_ms_per_image<=0.1"), among the runs within every budget."""
    architecture(model)  # a ConfigError naming the valid models for an unknown one
    budgets = names.metric_names("budget")
    rule = parse_rule(where, budgets, flag="--where", objective=False) if where else None
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
    tags = {k: f"{run.metrics[k]:.6g}" for k in names.metric_names("register") if k in run.metrics}
    tags[SELECT_BY] = f"{accuracy:.6g}"
    tags.update({"run_id": run.run_id, names.TAG_MODEL: model, "selected_by": SELECT_BY})
    if current is None:
        win, reason = True, "there was no champion yet"
        tags |= {TAG_RULE: PROMOTION_RULE, TAG_DECISION: "promoted: no champion yet"}
    else:
        verdict = challenge(run, current)
        win, reason = _decide(verdict, f"version {current.version} (run {current.run_id})", force)
        tags |= {TAG_RULE: PROMOTION_RULE, TAG_OUTCOME: verdict.outcome}
        tags[TAG_DECISION] = ("forced" if force else "promoted") if win else "kept the champion"
        if verdict.test is not None:
            tags |= {TAG_TEST: verdict.test, TAG_P_VALUE: f"{verdict.p_value:.6g}"}
    version = tracking.register(run.run_id, name, tags)
    if win:
        tracking.set_champion(name, version.version)
    return Registration(name, version.version, run.run_id, accuracy, win, reason)


def _decide(verdict: Verdict, was: str, force: bool) -> tuple[bool, str]:
    """(whether the alias moves, why in words)."""
    if force:
        return True, f"--force given; replaced {was} ({verdict.outcome}: {verdict.detail})"
    if verdict.outcome == "better":
        return True, f"it beats {was} beyond noise: {verdict.detail}"
    keep = "the champion stays; use --force to move it anyway"
    if verdict.outcome == "worse":
        return False, f"{was} is better beyond noise ({verdict.detail}); {keep}"
    if verdict.outcome == "tie":
        return False, f"a tie: it cannot be told apart from {was} ({verdict.detail}); {keep}"
    return False, f"no test could be run against {was}: {verdict.detail}; {keep}"


def challenge(run: tracking.RunRecord, current: tracking.Version) -> Verdict:
    """`run` against the champion `current` on the test digits (PROMOTION_RULE)."""
    if _run_or_none(current.run_id) is None:
        return Verdict("no test", f"the champion's run {current.run_id} is gone (deleted)")
    ours = tracking.read_predictions(run.run_id, "test")
    theirs = tracking.read_predictions(current.run_id, "test")
    missing = [who for who, f in (("the challenger", ours), ("the champion", theirs)) if f is None]
    if missing:
        return Verdict("no test", f"{' and '.join(missing)} logged no test predictions")
    if not same_digits([ours, theirs]):
        return Verdict(
            "no test",
            f"the two were scored on different test digits ({len(ours)} and {len(theirs)}: "
            "another max_test_samples); train the challenger on the champion's settings",
        )
    ours, theirs = (f.sort_values("index", kind="stable") for f in (ours, theirs))
    wins, losses, p_better = promotion_test(correct(ours), correct(theirs))
    p_worse = promotion_test(correct(theirs), correct(ours))[2]
    outcome = "better" if p_better < ALPHA else "worse" if p_worse < ALPHA else "tie"
    detail = (
        f"on the same {len(ours)} test digits, which no choice touched: {wins} right only by "
        f"the challenger, {losses} only by the champion; exact McNemar, one-sided p = "
        f"{p_better:.3g} (challenger better), {p_worse:.3g} (champion better)"
    )
    return Verdict(outcome, detail, PROMOTION_TEST, p_better)


def _run_or_none(run_id: str | None) -> tracking.RunRecord | None:
    if not run_id:
        return None
    try:
        return tracking.get_run(run_id)
    except LabError:
        return None
