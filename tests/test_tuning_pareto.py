"""Several objectives (tuning/objectives.py, tuning/pareto.py): `--pick` on a known study, the
Pareto trials retrained and listed, and a two-objective study that starts from the defaults."""

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tuning_helpers import (
    DATA,
    all_runs,
    assert_consistent,
    load,
    options,
    trial_runs,
)

from mnist_lab import names
from mnist_lab.tuning.space import load_space
from mnist_lab.tuning.tuner import TuneOptions, tune

# --- several objectives, the defaults as trial 0 ---------------------------------------------

# Five finished trials with known values (val_accuracy, inference_ms_per_image); trial 0 ran the
# defaults. Trial 2 dominates the defaults; 1, 2 and 3 form the Pareto front; 4 is dominated.
KNOWN = [
    (0.980, 0.12, 40_000),  # 0: the defaults
    (0.990, 0.30, 90_000),  # 1: the most accurate, slow
    (0.985, 0.09, 50_000),  # 2: the most accurate within 0.1 ms
    (0.970, 0.05, 20_000),  # 3: the fastest
    (0.975, 0.20, 60_000),  # 4: dominated
]


def known_study(objectives) -> optuna.Study:
    from optuna.distributions import FloatDistribution

    from mnist_lab.tuning.defaults import ATTR_DEFAULTS
    from mnist_lab.tuning.pareto import ATTR_METRICS
    from mnist_lab.tuning.study import ATTR_OVERRIDES

    study = optuna.create_study(directions=objectives.directions)
    for number, (accuracy, ms, params) in enumerate(KNOWN):
        metrics = {
            "val_accuracy": accuracy,
            "inference_ms_per_image": ms,
            "num_params": params,
        }
        attrs = {ATTR_METRICS: metrics, ATTR_OVERRIDES: {"lr": 0.01 * (number + 1)}}
        if number == 0:
            attrs[ATTR_DEFAULTS] = True
        trial = optuna.trial.create_trial(
            params={"lr": 0.01 * (number + 1)},
            distributions={"lr": FloatDistribution(1e-3, 1.0, log=True)},
            values=objectives.values(metrics),
            user_attrs=attrs,
        )
        for budget in objectives.constraints:  # as the tuner's objective stores them
            trial.set_constraint(str(budget), budget.violation(metrics))
        study.add_trial(trial)
    return study


def test_pick_chooses_the_right_trial_of_a_known_study():
    from mnist_lab.tuning.objectives import parse_objectives
    from mnist_lab.tuning.pareto import choose, front_figure, pareto_rows

    two = parse_objectives("val_accuracy,inference_ms_per_image", None, "auto")
    study = known_study(two)
    choice = choose(study, two)
    assert choice.pareto == [1, 2, 3] and [w.trial for w in choice.winners] == [1, 2, 3]
    assert choice.picked is None and choice.defaults.trial == 0
    rows = pareto_rows(study, two, choice)
    assert [r["trial"] for r in rows] == [1, 2, 3]
    assert rows[1]["val_accuracy"] == 0.985 and rows[1]["inference_ms_per_image"] == 0.09
    assert rows[1]["val_accuracy_vs_defaults"] == pytest.approx(0.005)  # better: > 0
    assert rows[1]["inference_ms_per_image_vs_defaults"] == pytest.approx(0.03)
    assert rows[0]["inference_ms_per_image_vs_defaults"] == pytest.approx(-0.18)  # slower
    figure = front_figure(study, two, choice, "known")
    assert (
        len(figure.axes) == 1
        and "5 finished trials, 3 Pareto-optimal" in figure.texts[0].get_text()
    )

    picked = parse_objectives(
        "val_accuracy,inference_ms_per_image", "val_accuracy, inference_ms_per_image<=0.1", "auto"
    )
    choice = choose(known_study(picked), picked)
    assert choice.picked == 2 and [w.trial for w in choice.winners] == [2]
    assert choice.winners[0].gains == pytest.approx(
        {"val_accuracy": 0.005, "inference_ms_per_image": 0.03}
    )
    assert choice.vs_defaults == (
        "trial 2 vs the defaults (trial 0): val_accuracy 98.50 % vs 98.00 % (+0.50 pp, better), "
        "inference_ms_per_image 0.09 vs 0.12 (-25.0 %, better)"
    )
    # The same rule over a single-objective study reads the metrics the trials measured.
    single = parse_objectives(None, "val_accuracy, inference_ms_per_image<=0.1", "auto")
    assert choose(known_study(single), single).picked == 2
    plain = parse_objectives(None, None, "auto")
    assert choose(known_study(plain), plain).winners[0].trial == 1
    # Budgets on a metric that is not an objective, and a budget nothing meets.
    lean = parse_objectives("val_accuracy,inference_ms_per_image", "num_params<=45000", "auto")
    assert choose(known_study(lean), lean).picked == 0  # 0 and 3 fit; 0 is more accurate
    none = parse_objectives(None, "val_accuracy, inference_ms_per_image<=0.01", "auto")
    nothing = choose(known_study(none), none)
    assert nothing.winners == [] and "no finished trial is within --pick" in nothing.note


def test_every_pareto_trial_is_retrained_and_the_parent_lists_them(monkeypatch):
    """--retrain without --pick on a multi-objective study: one `train` run per Pareto trial."""
    from mnist_lab.repeats import RepeatsResult
    from mnist_lab.train import TrainResult
    from mnist_lab.tuning import tuner
    from mnist_lab.tuning.pareto import Winner

    trained, tagged = [], {}

    def fake_train_seeds(config, seeds, *, tags, run_name):
        assert seeds == 1  # no --confirm-seeds: each winner once
        trained.append((config.lr, tags[names.TAG_RETRAINED_TRIAL], run_name))
        result = TrainResult(f"run-{len(trained)}", {"test_accuracy": 0.9}, 0.9, 1)
        return RepeatsResult(None, [result], {})

    monkeypatch.setattr(tuner, "train_seeds", fake_train_seeds)
    monkeypatch.setattr(tuner.tracking, "set_run_tags", lambda run, tags: tagged.update(tags))
    opts = TuneOptions(model="cnn", retrain="subset", data=dict(DATA))
    result = tuner.TuneResult("s", "parent", 3, {}, 0.9, {}, 1.0)
    result.winners = [Winner(1, {"lr": 0.02}, {}), Winner(3, {"lr": 0.04}, {})]
    tuner._retrain(opts, load_space("cnn"), result)
    assert trained == [(0.02, "1", "retrain-cnn-trial-1"), (0.04, "3", "retrain-cnn-trial-3")]
    assert result.retrain_run_id == "run-1" and result.retrain_run_ids == ["run-1", "run-2"]
    assert tagged == {names.TAG_RETRAIN_RUN_ID: "run-1", names.TAG_RETRAIN_RUN_IDS: "run-1,run-2"}


# robustness_samples 0: the retrained run skips the corruption suite, which no test here reads.
MO_SPACE = """
fixed:
  epochs: 2
  checkpoint: false
  width: 4
  robustness_samples: 0
params:
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  depth: {type: int, low: 1, high: 3}
  dropout: {type: categorical, choices: [0.0, 0.1]}
"""


@pytest.mark.slow
def test_the_constraint_measures_gain_is_paired_by_seed_and_ties_inside_the_noise():
    """`measure constraints` compares the constrained studies' share within the budget to the
    unconstrained ones' seed by seed: a steady gain is one, a gain that varies by seed as much
    as it is large is a tie, and one seed has no interval."""
    from mnist_lab.measure.constraints import gain

    steady = gain([0.80, 0.85, 0.90], [0.50, 0.53, 0.61])
    assert steady.startswith("+0.30 [") and steady.endswith("paired t over 3 seeds: gain")
    # Unpaired, these shares would differ (means 0.63 against 0.53); paired, the seeds disagree.
    assert gain([0.90, 0.40, 0.60], [0.50, 0.50, 0.60]).endswith(": tie")
    assert gain([0.40, 0.42, 0.41], [0.60, 0.65, 0.61]).endswith(": loss")
    assert gain([0.7], [0.5]) == "+0.20 (one seed: no interval)"


def test_constraints_bound_the_winners_of_a_known_study():
    from mnist_lab.tuning.objectives import parse_objectives
    from mnist_lab.tuning.pareto import choose

    fast = parse_objectives(None, None, "auto", constraint="inference_ms_per_image<=0.1")
    assert [str(c) for c in fast.constraints] == ["inference_ms_per_image<=0.1"]
    assert fast.pick is None and fast.measured == ("inference_ms_per_image",)
    choice = choose(known_study(fast), fast)
    assert [w.trial for w in choice.winners] == [2]  # the most accurate within 0.1 ms
    two = parse_objectives("val_accuracy,num_params", None, "auto", "inference_ms_per_image<0.1")
    assert choose(known_study(two), two).pareto == [2, 3]  # 1 is too slow
    # --pick's budgets and --constraint's both bound the pick and steer the sampler.
    both = parse_objectives(
        None, "val_accuracy, num_params<=45000", "auto", "inference_ms_per_image<=1"
    )
    assert [str(c) for c in both.constraints] == ["num_params<=45000", "inference_ms_per_image<=1"]
    nothing = parse_objectives(None, None, "auto", "inference_ms_per_image<=0.01")
    none = choose(known_study(nothing), nothing)
    assert none.winners == [] and "no finished trial is within --constraint" in none.note


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ("val_accuracy", "has no bound; --constraint takes budgets only"),
        ("latency<=1", "unknown metric 'latency'"),
        ("num_params<=many", "'many' in 'num_params<=many' is not a number"),
    ],
)
def test_a_bad_constraint_is_refused(constraint, message):
    from mnist_lab.errors import ConfigError
    from mnist_lab.tuning.objectives import parse_objectives

    with pytest.raises(ConfigError, match=message):
        parse_objectives(None, None, "auto", constraint)


def test_each_trial_stores_how_far_it_is_from_the_budget(mnist_dir, mlflow_store, tmp_path):
    space = tmp_path / "mo.yaml"
    space.write_text(MO_SPACE)
    opts = options(tmp_path, space, n_trials=2, constraint="num_params<=1e9, num_params>=1e8")
    result = tune(opts)
    trials = load(opts).trials
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        params = trial.user_attrs["metrics"]["num_params"]
        assert trial.constraints == {
            "num_params<=1e+09": params - 1e9,  # within: <= 0
            "num_params>=1e+08": 1e8 - params,  # beyond: > 0
        }
    assert result.winners == [] and "within --constraint" in result.retrain_note


def test_a_two_objective_study_logs_its_pareto_front_and_starts_from_the_defaults(
    mnist_dir, mlflow_store, tmp_path
):
    from mnist_lab.tuning.pareto import ATTR_METRICS

    space = tmp_path / "mo.yaml"
    space.write_text(MO_SPACE)
    opts = options(
        tmp_path,
        space,
        n_trials=4,
        objectives="val_accuracy,inference_ms_per_image",
        pick="val_accuracy, inference_ms_per_image<=1000",  # every trial fits
        retrain="subset",
        pruner="auto",
    )
    result = tune(opts)
    study = load(opts)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert study.metric_names == ["val_accuracy", "inference_ms_per_image"]
    assert all(t.intermediate_values == {} for t in trials)  # nothing reported: no pruning
    # Trial 0 ran experiments/cnn.yaml's values (all three lie inside this space).
    assert trials[0].params == {"lr": 0.01, "depth": 3, "dropout": 0.1}
    assert trials[0].user_attrs["defaults_trial"] is True
    fixed = {"epochs": 2, "width": 4, "robustness_samples": 0}
    assert trials[0].user_attrs["fixed_over_defaults"] == fixed

    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    tags, metrics = parent.data.tags, parent.data.metrics
    assert tags[names.TAG_OBJECTIVES] == "val_accuracy,inference_ms_per_image"
    assert tags[names.TAG_PRUNER] == "none"
    assert parent.data.params["objectives"] == "val_accuracy,inference_ms_per_image"
    assert parent.data.params["pick"] == opts.pick and parent.data.params["pruner"] == "auto"
    pareto = sorted(t.number for t in study.best_trials)
    assert tags[names.TAG_PARETO_TRIALS] == ",".join(map(str, pareto)) and result.pareto == pareto
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert names.PLOT_PARETO_FRONT in artifacts
    table = mlflow.load_table(names.PARETO_TRIALS_FILE, run_ids=[result.parent_run_id])
    assert table["trial"].tolist() == pareto
    for row in table.to_dict("records"):
        values = [row["val_accuracy"], row["inference_ms_per_image"]]
        assert values == pytest.approx(trials[row["trial"]].values, rel=1e-6)
    assert metrics[names.defaults_metric("val_accuracy")] == trials[0].values[0]
    assert "vs the defaults (trial 0)" in tags[names.TAG_VS_DEFAULTS] or (
        "is the defaults" in tags[names.TAG_VS_DEFAULTS]
    )

    runs = trial_runs(result.parent_run_id)
    assert_consistent(study, runs)
    for run in runs:
        number = int(run.data.tags[names.TAG_TRIAL_NUMBER])
        assert run.data.tags[names.TAG_PARETO_OPTIMAL] == str(number in pareto).lower()
        measured = run.data.metrics[names.INFERENCE_MS_PER_IMAGE]
        assert measured == pytest.approx(trials[number].values[1]) and measured > 0
        assert trials[number].user_attrs[ATTR_METRICS]["inference_ms_per_image"] == measured
        assert names.TEST_ACCURACY not in run.data.metrics  # trials never see the test set
    (zero,) = [r for r in runs if r.data.tags[names.TAG_TRIAL_NUMBER] == "0"]
    assert zero.data.tags[names.TAG_DEFAULTS_TRIAL] == "true"

    # --pick: the most accurate trial within the budget (here: every trial), retrained alone.
    accuracies = [t.values[0] for t in trials]
    assert result.picked == accuracies.index(max(accuracies))
    assert tags[names.TAG_PICKED_TRIAL] == str(result.picked)
    (retrain,) = [r for r in all_runs() if r.data.tags.get(names.TAG_TUNE_RUN_ID)]
    assert retrain.data.tags[names.TAG_RETRAINED_TRIAL] == str(result.picked)
    assert retrain.info.run_id == result.retrain_run_id == tags[names.TAG_RETRAIN_RUN_ID]
