"""Rules that choose a trial or a run: `tune --pick "val_accuracy, inference_ms_per_image<=0.1"`
and `register --where "inference_ms_per_image<=0.1"` (analysis/selection.py, one parser)."""

import pytest
import torch

from mnist_lab import names, tracking
from mnist_lab.analysis.selection import Constraint, Rule, gain, parse_rule
from mnist_lab.cli import main
from mnist_lab.errors import ConfigError
from mnist_lab.models.build import ModelSpec
from mnist_lab.names import METRICS
from mnist_lab.serving.register import best_run

OBJECTIVES = [
    "val_accuracy",
    "val_robust_accuracy",
    "num_params",
    "train_flops_per_image",
    "inference_ms_per_image",
    "train_time_s",
]
# A known set of trials: (val_accuracy, inference_ms_per_image, num_params).
TRIALS = [
    {"val_accuracy": 0.990, "inference_ms_per_image": 0.30, "num_params": 9e4},  # 0: most accurate
    {"val_accuracy": 0.985, "inference_ms_per_image": 0.09, "num_params": 5e4},  # 1: best < 0.1
    {"val_accuracy": 0.970, "inference_ms_per_image": 0.05, "num_params": 2e4},  # 2: fastest
    {"val_accuracy": 0.985, "inference_ms_per_image": 0.08, "num_params": 6e4},  # 3: ties 1
    {"val_accuracy": 0.999, "num_params": 1e5},  # 4: latency not measured (failed to)
]


RUN_BUDGETS = names.metric_names("budget")


def test_every_objective_has_a_direction_and_a_label_with_its_unit():
    assert sorted(OBJECTIVES) == sorted(names.metric_names("objective"))
    assert [METRICS[m].direction for m in OBJECTIVES] == [
        "maximize",
        "maximize",
        "minimize",
        "minimize",
        "minimize",
        "minimize",
    ]
    assert "ms per image" in METRICS["inference_ms_per_image"].label
    assert "(s)" in METRICS["train_time_s"].label


def test_pick_chooses_the_most_accurate_trial_within_the_budget():
    rule = parse_rule("val_accuracy, inference_ms_per_image<=0.1", OBJECTIVES)
    assert rule == Rule("val_accuracy", (Constraint("inference_ms_per_image", "<=", 0.1),))
    assert rule.metrics == ["val_accuracy", "inference_ms_per_image"]
    assert rule.best(TRIALS) == 1  # 0 is too slow, 4 unmeasured; 1 before its tie 3
    assert rule.select(TRIALS) == [1, 2, 3]
    assert parse_rule("val_accuracy", OBJECTIVES).best(TRIALS) == 4  # no budget
    # Each metric in its own direction; several budgets all hold.
    assert parse_rule("inference_ms_per_image", OBJECTIVES).best(TRIALS) == 2
    both = parse_rule(" val_accuracy ,inference_ms_per_image < 0.1,num_params<=5.5e4", OBJECTIVES)
    assert both.best(TRIALS) == 1
    assert parse_rule("num_params, val_accuracy>=0.98", OBJECTIVES).best(TRIALS) == 1
    assert parse_rule("val_accuracy, inference_ms_per_image<0.01", OBJECTIVES).best(TRIALS) is None
    assert str(both) == "val_accuracy, inference_ms_per_image<0.1, num_params<=55000"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "give a metric"),
        ("val_accuracy,,num_params<=1", "empty item"),
        ("val_acc", "unknown metric 'val_acc'; choose from val_accuracy, val_robust_accuracy"),
        ("test_accuracy, num_params<=1", "unknown metric 'test_accuracy'"),
        ("val_accuracy, num_params<=lots", "'lots' in 'num_params<=lots' is not a number"),
        ("val_accuracy, num_params", "two metrics to optimise"),
        ("val_accuracy, num_params=1", "cannot read 'num_params=1'"),
    ],
)
def test_a_bad_rule_says_what_is_wrong(text, problem):
    with pytest.raises(ConfigError, match="--pick") as err:
        parse_rule(text, OBJECTIVES)
    assert problem in str(err.value)


def test_where_takes_budgets_only():
    rule = parse_rule("inference_ms_per_image<=0.1", RUN_BUDGETS, flag="--where", objective=False)
    assert rule.objective is None and rule.feasible({"inference_ms_per_image": 0.1})
    assert not rule.feasible({"inference_ms_per_image": float("nan")})
    with pytest.raises(ConfigError, match="--where takes budgets only"):
        parse_rule("num_params", RUN_BUDGETS, flag="--where", objective=False)


def test_gain_is_positive_when_better_in_the_metrics_direction():
    assert gain(0.98, 0.99, "val_accuracy") == pytest.approx(0.01)
    assert gain(0.2, 0.05, "inference_ms_per_image") == pytest.approx(0.15)
    assert gain(1e4, 2e4, "num_params") == pytest.approx(-1e4)


# --- register --where ------------------------------------------------------------------------


def fake_run(val_accuracy: float, latency: float, monkeypatch, model: bool = False) -> str:
    """A finished cnn `train` run with these metrics (and, if asked, a tiny logged model)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "budgets")
    mlflow.set_experiment("budgets")
    with tracking.run(tags={names.TAG_KIND: "train", names.TAG_MODEL: "cnn"}) as active:
        tracking.log_metrics(
            {names.BEST_VAL_ACCURACY: val_accuracy, names.INFERENCE_MS_PER_IMAGE: latency}
        )
        if model:
            spec = ModelSpec("cnn", {"depth": 1, "width": 2})
            tracking.log_model(spec.build(), torch.rand(2, 28, 28).numpy(), spec)
    return active.info.run_id


def test_register_where_chooses_the_best_run_within_the_budget(mlflow_store, monkeypatch, capsys):
    fake_run(0.995, 0.30, monkeypatch)  # the most accurate, too slow
    fast = fake_run(0.990, 0.08, monkeypatch, model=True)
    fake_run(0.980, 0.05, monkeypatch)
    assert best_run("cnn").metrics[names.BEST_VAL_ACCURACY] == pytest.approx(0.995)
    assert best_run("cnn", "inference_ms_per_image<=0.1").run_id == fast
    assert main(["register", "--model", "cnn", "--where", "inference_ms_per_image<=0.1"]) == 0
    assert f"registered run {fast}" in capsys.readouterr().out
    # MLproject's "none" (and "") mean no budget.
    assert best_run("cnn", None).metrics[names.BEST_VAL_ACCURACY] == pytest.approx(0.995)

    assert main(["register", "--model", "cnn", "--where", "inference_ms_per_image<=0.01"]) == 1
    err = capsys.readouterr().err
    assert "none of the 3 finished cnn train runs is within --where" in err


def test_register_where_rejects_a_bad_budget_before_reading_runs(mlflow_store, capsys):
    assert main(["register", "--model", "cnn", "--where", "test_accuracy>=0.99"]) == 1
    assert "unknown metric 'test_accuracy'" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["inference_ms_per_image<=0.1", "none"])
def test_register_where_arrives_through_mlflow_run(where):
    import shlex

    from mlflow.projects._project_spec import load_project

    from mnist_lab.cli import build_parser
    from mnist_lab.config import PROJECT_ROOT

    entry = load_project(str(PROJECT_ROOT)).get_entry_point("register")
    words = shlex.split(entry.compute_command({"model": "cnn", "where": where}, None))
    assert build_parser().parse_args(words[3:]).where == where
