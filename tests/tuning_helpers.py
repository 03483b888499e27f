"""What the tuning tests share: a tiny search space, study options on a few hundred digits and
the checks of what a study leaves in Optuna and MLflow."""

from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from mnist_lab import names
from mnist_lab.tuning.study import open_storage
from mnist_lab.tuning.tuner import TuneOptions

# robustness_samples 0: retrained runs skip the end-of-run corruption suite (~10 s each), which
# no tuning test reads; test_robustness and test_train check it.
TINY_SPACE = """
fixed:
  epochs: 2
  checkpoint: false
  width: 4
  robustness_samples: 0
params:
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  depth: {type: int, low: 1, high: 2}
  dropout: {type: categorical, choices: [0.0, 0.2]}
pruner:
  median: {n_startup_trials: 1, n_warmup_steps: 0}
"""
DATA = {"max_train_samples": 300, "max_test_samples": 100, "val_size": 100}
DATA_FLAGS = ["--max-train-samples", "300", "--max-test-samples", "100", "--val-size", "100"]
FINAL = {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}


def options(tmp_path: Path, space: Path, **kwargs) -> TuneOptions:
    defaults = {
        "model": "cnn",
        "n_trials": 2,
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "space_path": str(space),
        "data": dict(DATA),
        "retrain": "none",
        "pruner": "none",
    }
    return TuneOptions(**{**defaults, **kwargs})


def load(opts: TuneOptions) -> optuna.Study:
    return optuna.load_study(study_name=opts.name, storage=open_storage(opts.storage))


def no_runs(tmp_path: Path) -> bool:
    """Nothing was logged: the tracking store was not even created (or holds no run)."""
    return not (tmp_path / "mlflow.db").exists() or all_runs() == []


def all_runs() -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def trial_runs(parent_run_id: str | None = None) -> list:
    runs = [r for r in all_runs() if r.data.tags.get(names.TAG_KIND) == "trial"]
    if parent_run_id:
        runs = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_run_id]
    return runs


def assert_consistent(study: optuna.Study, runs: list) -> None:
    """Every trial final, numbered once, and its run tagged with the same state."""
    trials = study.get_trials()
    assert {t.state for t in trials} <= FINAL
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    by_number = {int(r.data.tags[names.TAG_TRIAL_NUMBER]): r for r in runs}
    for trial in trials:
        run = by_number[trial.number]
        assert run.data.tags[names.TAG_TRIAL_STATE] == trial.state.name
        expected = "FAILED" if trial.state == TrialState.FAIL else "FINISHED"
        assert run.info.status == expected
