"""`tune`: search spaces, small studies on tiny subsets, and what lands in Optuna and MLflow.

Studies run 2-4 trials of a tiny CNN on a few hundred images. SQLite and journal storages run
everywhere; PostgreSQL (and an `mlflow server` backed by it) where MNIST_LAB_TEST_POSTGRES_URL
is set, each test in a database of its own that is dropped afterwards.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import optuna
import pytest
import requests
from lab_helpers import free_port, server_process, tracking_server
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from mnist_lab import names, tracking
from mnist_lab.cli import main
from mnist_lab.config import PROJECT_ROOT, load_config
from mnist_lab.errors import ConfigError
from mnist_lab.tuning.claim import claim, release
from mnist_lab.tuning.space import TUNING_DIR, load_space
from mnist_lab.tuning.study import open_storage, open_study
from mnist_lab.tuning.tuner import TuneOptions, tune

TINY_SPACE = """
fixed:
  epochs: 2
  checkpoint: false
  width: 4
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


@pytest.fixture
def space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(TINY_SPACE)
    return path


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


# --- search spaces -------------------------------------------------------------------------


def shipped_model(path: Path) -> str:
    """The model a shipped space file is for: tuning/timm.yaml serves every timm:<name>."""
    return "timm:resnet18" if path.stem == "timm" else path.stem


@pytest.mark.parametrize("path", sorted(TUNING_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_suggests_valid_configs(path):
    from mnist_lab.config import load_config

    model = shipped_model(path)
    space = load_space(model)
    assert space.path == path
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        overrides = space.suggest(trial)
        load_config(model, {**space.fixed, **overrides})  # raises on a bad combination
        study.tell(trial, 0.0)


def test_every_model_has_a_space():
    from mnist_lab.models import MODELS

    assert {*MODELS, "timm"} <= {p.stem for p in TUNING_DIR.glob("*.yaml")}
    assert load_space("timm:convnext_atto").path == TUNING_DIR / "timm.yaml"
    for model in ("timm_vit", "timm:resnet18"):  # what the issue asked them to tune
        assert {"lr", "weight_decay", "batch_size", "drop_path", "augment"} <= set(
            load_space(model).params
        )


def test_the_front_spaces_load_and_hold_their_models_defaults():
    """tuning/fronts/<model>_*.yaml: the spaces of the README's measured Pareto fronts."""
    from mnist_lab.tuning.defaults import model_defaults

    paths = sorted((TUNING_DIR / "fronts").glob("*.yaml"))
    assert paths
    for path in paths:
        model = path.stem.split("_")[0]
        space = load_space(model, path)
        inside, outside = space.defaults_params(model_defaults(model))
        assert inside and outside == {}, path.name


def test_no_space_file_points_to_a_module_that_does_not_exist():
    for path in TUNING_DIR.rglob("*.yaml"):
        for module in re.findall(r"mnist_lab/[\w/]+\.py", path.read_text()):
            assert (PROJECT_ROOT / module).is_file(), f"{path.name}: {module}"


@pytest.mark.parametrize("path", sorted(TUNING_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_the_first_trial_of_every_shipped_space_is_its_models_defaults(tmp_path, path):
    """Each study enqueues experiments/<model>.yaml's values as trial 0; in the shipped spaces
    every default lies inside, so trial 0's params equal them."""
    from mnist_lab.tuning.defaults import ATTR_DEFAULTS, enqueue_defaults, model_defaults

    model = shipped_model(path)
    space = load_space(model)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    storage = open_storage(url)
    study = open_study(storage, "s", space, {})
    assert enqueue_defaults(url, storage, study, space, {"pid": 1})
    assert enqueue_defaults(url, storage, study, space, {"pid": 2}) is None  # once
    (first,) = study.get_trials()
    assert first.state == TrialState.WAITING and first.user_attrs[ATTR_DEFAULTS]
    defaults = model_defaults(model)
    trial = study.ask()  # what a worker gets: the enqueued trial, its params fixed
    assert trial.number == 0
    suggested = space.suggest(trial)
    assert suggested == {name: defaults[name] for name in suggested}
    assert set(suggested) >= {n for n in space.params if "when" not in space.params[n]}
    assert first.user_attrs["defaults_outside_space"] == {}


def test_conditional_parameters():
    vit = load_space("vit")
    vgg = load_space("vgg16")
    vit_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    vgg_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_frozen, seen_native = False, False
    for _ in range(40):
        trial = vit_study.ask()
        chosen = vit.suggest(trial)
        assert chosen["dim"] % chosen["heads"] == 0
        assert f"heads|dim={chosen['dim']}" in trial.params  # one Optuna name per case
        vit_study.tell(trial, 0.0)
        trial = vgg_study.ask()
        native = vgg.suggest(trial)
        if native["input_size"] == 32:
            assert "weights" not in native and "freeze_features" not in native
            seen_native = True
        else:
            seen_frozen |= "freeze_features" in native
        vgg_study.tell(trial, 0.0)
    assert seen_frozen and seen_native


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("params: [1, 2", "", "not valid YAML"),
        ("fixed: {}\n", "params", "must map settings to specs"),
        ("bogus: 1\nparams: {lr: {type: float, low: 1, high: 2}}", "bogus", "unknown section"),
        ("params: {lr: {type: normal, low: 1, high: 2}}", "params.lr.type", "got 'normal'"),
        ("params: {lr: {type: float, low: 0.1, high: 0.01}}", "params.lr", "must be < high"),
        ("params: {lr: {type: float, low: 0, high: 1, log: true}}", "params.lr.low", "> 0"),
        ("params: {lr: {type: float, low: x, high: 1}}", "params.lr.low", "'x' is not a float"),
        ("params: {lr: {type: float, high: 1}}", "params.lr.low", "is missing"),
        ("params: {lr: {type: float, low: 1, high: 2, lo: 3}}", "params.lr", "unknown keys"),
        ("params: {width: {type: categorical, choices: []}}", "params.width.choices", "list"),
        ("params: {patch_size: {type: int, low: 1, high: 2}}", "patch_size", "not a setting"),
        ("fixed: {epochs: 0}\nparams: {lr: {type: float, low: 1, high: 2}}", "fixed", "epochs"),
        (
            "params: {depth: {depends_on: width, cases: {8: {type: int, low: 1, high: 2}}}}",
            "params.depth.depends_on",
            "'width' is not an earlier parameter",
        ),
        (
            "params: {dropout: {type: float, low: 0, high: 0.5, when: {width: 8}}}",
            "params.dropout.when",
            "'width' is not an earlier parameter",
        ),
        (
            "params: {lr: {type: float, low: 1, high: 2}}\npruner: {asha: {}}",
            "pruner.asha",
            "not one of",
        ),
    ],
)
def test_malformed_space_names_file_key_and_problem(tmp_path, text, key, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_space("cnn", path)
    message = str(err.value)
    assert str(path) in message and key in message and problem in message


def test_objectives_pick_and_pruner_are_read_as_documented():
    from mnist_lab.tuning.objectives import parse_objectives

    single = parse_objectives(None, None, "auto")
    assert single.chosen == ("val_accuracy",) and single.pruner == "hyperband" and single.prunable
    two = parse_objectives(" val_accuracy, inference_ms_per_image ", None, "auto")
    assert two.chosen == ("val_accuracy", "inference_ms_per_image") and two.multi
    assert two.directions == ["maximize", "minimize"] and two.pruner == "none"
    assert two.measured == ("inference_ms_per_image",)
    robust = parse_objectives("val_robust_accuracy", "val_robust_accuracy", "none")
    assert not robust.prunable and robust.measured == ("val_robust_accuracy",)
    # A pick reads metrics the objectives do not: the trials measure them too.
    picked = parse_objectives(None, "val_accuracy, inference_ms_per_image<=0.1", "auto")
    assert picked.measured == ("inference_ms_per_image",) and picked.pruner == "hyperband"
    budgets = parse_objectives("num_params,val_accuracy", "val_accuracy>=0.99", "auto")
    assert budgets.pick.objective == "num_params"  # budgets only: the first objective ranks


def test_a_different_space_under_the_same_name_is_refused(tmp_path, space):
    storage = open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    first = load_space("cnn", space)
    open_study(storage, "s", first, {"max_train_samples": 300})
    open_study(storage, "s", first, {"max_train_samples": 300})  # the same: continues
    other = tmp_path / "other.yaml"
    other.write_text(TINY_SPACE.replace("high: 2}", "high: 3}"))
    with pytest.raises(ConfigError, match="started with another search space"):
        open_study(storage, "s", load_space("cnn", other), {"max_train_samples": 300})
    with pytest.raises(ConfigError, match="--study-name"):
        open_study(storage, "s", first, {"max_train_samples": 1000})
    with pytest.raises(ConfigError, match="started with another search space"):  # objectives
        open_study(storage, "s", first, {"max_train_samples": 300, "objectives": ["num_params"]})


# --- bad input: exit 2 before any trial or run -----------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--n-trials", "0"], "n_trials=0 must be >= 1"),
        (["--n_trials", "two"], "n_trials='two' is not a valid int"),
        (["--workers", "0"], "workers=0 must be >= 1"),
        (["--pruner", "asha"], "pruner='asha' must be one of auto, hyperband, median, none"),
        (["--storage", "sqlite:////nonexistent-dir/x/optuna.db"], "cannot open the Optuna storage"),
        (["--storage", "journal:/nonexistent-dir/x.log"], "folder /nonexistent-dir does not"),
        (["--storage", "bogus://x"], "cannot open the Optuna storage bogus://x"),
        (
            ["--storage", "postgresql://user:secret@127.0.0.1:1/optuna"],
            "cannot open the Optuna storage postgresql://127.0.0.1:1/optuna: (psycopg."
            "OperationalError) connection failed",
        ),
        (["--space", "nowhere.yaml"], "nowhere.yaml: no search space file for model 'cnn'"),
        (["--study-name", "a'b"], 'study_name="a\'b": use letters'),
        (["--confirm-seeds", "1"], "confirm_seeds=1 must be 0 (off) or >= 2"),
        (["--confirm-seeds", "3", "--retrain", "none"], "confirm_seeds needs a retrain"),
        (["--objectives", "val_accuracy,speed"], "unknown objective 'speed'; choose up to 3"),
        (["--objectives", "num_params,num_params"], "an objective is named twice"),
        (
            ["--objectives", "val_accuracy,num_params,train_time_s,train_flops_per_image"],
            "at most 3 objectives",
        ),
        (
            ["--objectives", "val_accuracy,num_params", "--pruner", "hyperband"],
            "Optuna cannot prune a multi-objective study",
        ),
        (["--objectives", "val_robust_accuracy", "--pruner", "median"], "cannot prune"),
        (["--pick", "val_accuracy, inference_ms<=0.1"], "unknown metric 'inference_ms'"),
        (["--sampler", "cmaes"], "sampler='cmaes' must be one of tpe, random, nsga2"),
    ],
)
def test_bad_input_exits_2_before_any_trial(mlflow_store, tmp_path, capsys, argv, message):
    storage = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    assert main(["tune", *storage, *DATA_FLAGS, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "secret" not in err
    assert no_runs(tmp_path)


def test_malformed_space_file_exits_2(mlflow_store, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {lr: {type: float, low: 1}}")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["tune", "--space", str(bad), "--storage", storage]) == 2
    assert f"{bad}: params.lr.high: is missing" in capsys.readouterr().err
    assert no_runs(tmp_path)


# --- studies ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_small_study_lands_in_optuna_and_mlflow_then_resumes(
    mnist_dir, mlflow_store, tmp_path, space
):
    opts = options(tmp_path, space, n_trials=2, retrain="subset")
    result = tune(opts)
    study = load(opts)
    assert len(study.trials) == 2 and result.trials_run == 2

    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags[names.TAG_STUDY_NAME] == "cnn" and tags[names.TAG_MODEL] == "cnn"
    assert tags[names.TAG_SAMPLER] == "tpe" and tags[names.TAG_PRUNER] == "none"
    assert tags[names.TAG_STORAGE] == opts.storage
    metrics = parent.data.metrics
    assert metrics[names.BEST_VAL_ACCURACY] == pytest.approx(study.best_value)
    assert metrics[names.N_COMPLETE_TRIALS] == 2 and metrics[names.N_PRUNED_TRIALS] == 0
    assert metrics[names.N_FAILED_TRIALS] == 0
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id, "plots")}
    assert {
        names.PLOT_OPTIMIZATION_HISTORY,
        names.PLOT_PARAM_IMPORTANCES,
        names.PLOT_PARALLEL_COORDINATE,
        names.PLOT_INTERMEDIATE_VALUES,
    } <= artifacts
    assert '"lr"' in tags[names.TAG_BEST_PARAMS]

    runs = trial_runs(result.parent_run_id)
    assert len(runs) == 2
    assert_consistent(study, runs)
    for run in runs:
        assert run.data.params["max_train_samples"] == "300"
        assert run.data.params["epochs"] == "2" and "lr" in run.data.params
        assert names.TEST_ACCURACY not in run.data.metrics  # trials never see the test set
        history = client.get_metric_history(run.info.run_id, names.VAL_ACCURACY)
        assert [m.step for m in history] == [1, 2]
        trial = study.trials[int(run.data.tags[names.TAG_TRIAL_NUMBER])]
        assert run.data.metrics[names.BEST_VAL_ACCURACY] == pytest.approx(trial.value)
        val = tracking.read_predictions(run.info.run_id, "val")  # validation only, no test
        assert len(val) == 100 and tracking.read_predictions(run.info.run_id, "test") is None
        best = (val["prediction"] == val["label"]).mean()
        assert best == pytest.approx(trial.value, abs=0.011)  # the kept weights, in fp32

    retrain = client.get_run(result.retrain_run_id)
    assert retrain.data.tags[names.TAG_STUDY_NAME] == "cnn"
    assert retrain.data.tags[names.TAG_KIND] == "train"
    assert "mlflow.parentRunId" not in retrain.data.tags
    assert names.TEST_ACCURACY in retrain.data.metrics
    assert float(retrain.data.params["lr"]) == pytest.approx(study.best_params["lr"])
    models = mlflow.search_logged_models(
        experiment_ids=[retrain.info.experiment_id],
        filter_string=f"source_run_id = '{retrain.info.run_id}'",
        output_format="list",
    )
    assert sorted(m.name for m in models) == [names.MODEL_ARTIFACT, names.ONNX_ARTIFACT]
    assert tags[names.TAG_RETRAIN_RUN_ID] == result.retrain_run_id

    # The same name continues the study: n_trials is its size, so one more trial runs.
    again = tune(options(tmp_path, space, n_trials=3))
    assert again.trials_run == 1 and len(load(opts).trials) == 3


@pytest.mark.slow
def test_confirm_seeds_retrains_winner_and_defaults_and_tests_them(
    mnist_dir, mlflow_store, tmp_path, space
):
    opts = options(tmp_path, space, n_trials=1, retrain="subset", confirm_seeds=2)
    result = tune(opts)
    client = MlflowClient()
    parent = client.get_run(result.parent_run_id)
    tuned = client.get_run(result.retrain_run_id)  # the winner's repeats run
    defaults = client.get_run(parent.data.tags[names.TAG_DEFAULTS_RUN_ID])
    for repeats in (tuned, defaults):
        assert repeats.data.tags[names.TAG_KIND] == "repeats"
        assert repeats.data.metrics[names.N_SEEDS] == 2
    assert float(defaults.data.params["lr"]) == pytest.approx(load_config("cnn").lr)
    assert float(tuned.data.params["lr"]) == pytest.approx(load(opts).best_params["lr"])
    metrics = parent.data.metrics
    difference = (
        tuned.data.metrics["test_accuracy_mean"] - defaults.data.metrics["test_accuracy_mean"]
    )
    assert metrics[names.CONFIRM_DIFFERENCE] == pytest.approx(difference)
    assert metrics[names.CONFIRM_CI95_LOW] <= difference <= metrics[names.CONFIRM_CI95_HIGH]
    assert 0 <= metrics[names.CONFIRM_P_VALUE] <= 1
    assert parent.data.tags[names.TAG_CONFIRM_TEST] == "bootstrap (seeds × digits)"
    verdict = parent.data.tags[names.TAG_CONFIRM_VERDICT]
    assert verdict in result.confirmation and ("tie" in verdict or "beyond noise" in verdict)


@pytest.mark.slow
def test_pruner_stops_trials_on_a_space_built_for_it(mnist_dir, mlflow_store, tmp_path, space):
    opts = options(tmp_path, space, n_trials=3, pruner="median")
    storage = open_storage(opts.storage)
    study = open_study(
        storage, "cnn", load_space("cnn", space), {"max_train_samples": 300, "val_size": 100}
    )
    study.enqueue_trial({"lr": 0.03, "depth": 2, "dropout": 0.0})  # learns
    study.enqueue_trial({"lr": 0.003, "depth": 1, "dropout": 0.2})  # far behind after epoch 1
    study.enqueue_trial({"lr": 0.003, "depth": 1, "dropout": 0.2})
    opts.data["max_train_samples"] = 300
    tune(opts)
    study = load(opts)
    states = [t.state for t in study.trials]
    assert states[0] == TrialState.COMPLETE
    assert TrialState.PRUNED in states[1:]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(max(t.intermediate_values) < 2 for t in pruned)  # stopped before the budget
    runs = trial_runs()
    assert_consistent(study, runs)
    for run in runs:
        if run.data.tags[names.TAG_TRIAL_STATE] == "PRUNED":
            assert names.TAG_FAILURE_REASON not in run.data.tags  # not a generic failure
            assert "pruned after epoch 1" in run.data.tags["pruned_reason"]


@pytest.mark.slow
def test_failing_trials_are_fail_with_reason_and_the_study_goes_on(
    mnist_dir, mlflow_store, tmp_path, space
):
    text = TINY_SPACE.replace("high: 2}", "high: 6}")  # cnn depth 5-6 is a bad combination
    space.write_text(text.replace("checkpoint: false", "checkpoint: false\n  grad_clip: 0"))
    opts = options(tmp_path, space, n_trials=3)
    study = open_study(
        open_storage(opts.storage),
        "cnn",
        load_space("cnn", space),
        {"max_train_samples": 300, "val_size": 100},
    )
    study.enqueue_trial({"lr": 0.01, "depth": 6, "dropout": 0.0})  # no such cnn
    study.enqueue_trial({"lr": 1e12, "depth": 1, "dropout": 0.0})  # loss becomes NaN
    study.enqueue_trial({"lr": 0.01, "depth": 1, "dropout": 0.0})  # fine
    tune(opts)
    trials = load(opts).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert "cnn: depth must be 1..4" in trials[0].user_attrs["failure_reason"]
    assert "NonFiniteLossError" in trials[1].user_attrs["failure_reason"]
    assert_consistent(load(opts), trial_runs())
    failed = [r for r in trial_runs() if r.data.tags[names.TAG_TRIAL_STATE] == "FAIL"]
    assert all(names.TAG_FAILURE_REASON in r.data.tags for r in failed)


def _cli(tmp_path: Path, space: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop("MLFLOW_RUN_ID", None)
    command = [sys.executable, "-m", "mnist_lab", "tune", "--space", str(space), *DATA_FLAGS]
    command += ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--retrain", "none"]
    return subprocess.Popen([*command, *extra], cwd=tmp_path, env=env, stderr=subprocess.PIPE)


def _wait_for(opts: TuneOptions, state: TrialState, count: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with __import__("contextlib").suppress(KeyError, Exception):
            if sum(t.state == state for t in load(opts).trials) >= count:
                return
        time.sleep(0.5)
    raise AssertionError(f"no {count} {state.name} trial(s) within {timeout} s")


@pytest.mark.slow
def test_ctrl_c_leaves_a_consistent_study_that_a_rerun_continues(
    mnist_dir, mlflow_store, tmp_path, space
):
    space.write_text(TINY_SPACE.replace("epochs: 2", "epochs: 4"))
    opts = options(tmp_path, space, n_trials=3)
    process = _cli(tmp_path, space, "--n-trials", "3")
    _wait_for(opts, TrialState.COMPLETE, 1)
    _wait_for(opts, TrialState.RUNNING, 1)
    time.sleep(1)  # inside the trial's training
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-2000:]

    study = load(opts)
    assert {t.state for t in study.trials} <= FINAL  # nothing left RUNNING
    (parent,) = [r for r in all_runs() if r.data.tags.get(names.TAG_KIND) == "tune"]
    assert parent.info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in all_runs())

    result = tune(opts)
    study = load(opts)
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 3 and result.trials_run == 3 - sum(
        t.state == TrialState.COMPLETE
        for t in study.trials[: len(study.trials) - result.trials_run]
    )
    assert all(r.info.status != "RUNNING" for r in all_runs())


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_on_resume(mnist_dir, mlflow_store, tmp_path, space):
    space.write_text(TINY_SPACE.replace("epochs: 2", "epochs: 6"))
    opts = options(tmp_path, space, n_trials=2, heartbeat_interval=1)
    process = _cli(tmp_path, space, "--n-trials", "2", "--heartbeat-interval", "1")
    _wait_for(opts, TrialState.RUNNING, 1)
    deadline = time.monotonic() + 120
    while not [r for r in trial_runs() if r.info.status == "RUNNING"]:  # inside the trial
        assert time.monotonic() < deadline, "the trial's run never started"
        time.sleep(0.5)
    process.kill()
    process.wait()
    killed = next(t for t in load(opts).trials if t.state == TrialState.RUNNING)
    time.sleep(3)  # > grace period (2 heartbeats)

    tune(opts)
    trials = load(opts).trials
    assert trials[killed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    orphan = [r for r in trial_runs() if r.data.tags[names.TAG_TRIAL_NUMBER] == str(killed.number)]
    assert [r.info.status for r in orphan] == ["KILLED"]
    # The next tune's stale-run sweep saw its process gone (the trial's heartbeat would too).
    assert "stale: its process" in orphan[0].data.tags[names.TAG_FAILURE_REASON]
    # Every run is final, the killed invocation's parent run included (swept as stale).
    assert all(r.info.status != "RUNNING" for r in all_runs())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study(mnist_dir, mlflow_store, tmp_path, space, kind):
    storage = {
        "sqlite": f"sqlite:///{tmp_path / 'optuna.db'}",
        "journal": f"journal:{tmp_path / 'optuna.log'}",
    }[kind]
    opts = options(tmp_path, space, n_trials=4, workers=2, storage=storage)
    result = tune(opts)
    study = load(opts)
    assert len(study.trials) == 4 and result.trials_run == 4
    assert_consistent(study, trial_runs(result.parent_run_id))
    assert len(trial_runs()) == 4


@pytest.mark.slow
def test_mlflow_run_tune_entry_point(mnist_dir, mlflow_store, tmp_path, space):
    """`mlflow run . -e tune`: the launcher's run becomes the parent of the trials' runs."""
    client = MlflowClient()
    experiment_id = client.create_experiment("tuning", artifact_location=str(tmp_path / "art"))
    params = {
        "model": "cnn",
        "n_trials": "2",
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "pruner": "none",
        "max_train_samples": "300",
        "max_test_samples": "100",
        "val_size": "100",  # undeclared: appended as --val_size
        "space": str(space),
        "retrain": "none",
    }
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_cli, "run", str(PROJECT_ROOT), "-e", "tune", "--env-manager", "local"]
    command += ["--experiment-name", "tuning"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID",)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(names.TAG_KIND) == "tune"]
    assert parent.info.status == "FINISHED"
    assert parent.data.params["n_trials"] == "2" and parent.data.params["timeout"] == "none"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    assert all(r.data.tags[names.TAG_TRIAL_STATE] == "COMPLETE" for r in children)
    # -P retrain=none and -P pruner=none arrived as the choices they are, not as "unset".
    assert not [r for r in runs if r.data.tags.get(names.TAG_TUNE_RUN_ID)]
    assert parent.data.tags[names.TAG_PRUNER] == "none"


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
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.01 * (number + 1)},
                distributions={"lr": FloatDistribution(1e-3, 1.0, log=True)},
                values=objectives.values(metrics),
                user_attrs=attrs,
            )
        )
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
    assert choose(known_study(single), parse_objectives(None, None, "auto")).winners[0].trial == 1
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


MO_SPACE = """
fixed:
  epochs: 2
  checkpoint: false
  width: 4
params:
  lr: {type: float, low: 3.0e-3, high: 3.0e-2, log: true}
  depth: {type: int, low: 1, high: 3}
  dropout: {type: categorical, choices: [0.0, 0.1]}
"""


@pytest.mark.slow
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
    assert trials[0].user_attrs["fixed_over_defaults"] == {"epochs": 2, "width": 4}

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


# --- PostgreSQL and an mlflow server ---------------------------------------------------------


@pytest.fixture
def mlflow_server(postgres_db, tmp_path, monkeypatch):
    """`mlflow server` on 127.0.0.1 with a PostgreSQL backend store; stopped afterwards."""
    with tracking_server(tmp_path, postgres_db(), monkeypatch) as uri:
        yield uri


@pytest.mark.postgres
def test_one_plain_postgresql_url_works_in_every_tool(postgres_db, tmp_path, space, monkeypatch):
    """`tune --storage`, `optuna.load_study`, `optuna-dashboard` and `mlflow server` all take
    postgresql://… as it is (psycopg 3, SQLAlchemy 2.1's default driver): nothing to rewrite."""
    url = postgres_db()
    assert url.startswith("postgresql://")
    study = open_study(open_storage(url), "s", load_space("cnn", space), {})
    assert study.user_attrs["model"] == "cnn"
    assert optuna.load_study(study_name="s", storage=url).user_attrs["model"] == "cnn"
    port = free_port()
    dashboard = [str(Path(sys.executable).parent / "optuna-dashboard"), url]
    dashboard += ["--host", "127.0.0.1", "--port", str(port)]
    with server_process(dashboard, f"http://127.0.0.1:{port}/api/studies", tmp_path / "d.log"):
        answer = requests.get(f"http://127.0.0.1:{port}/api/studies", timeout=10).json()
        (summary,) = answer["study_summaries"]
        detail = requests.get(
            f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", timeout=10
        ).json()
    assert summary["study_name"] == "s"
    assert detail["objective_names"] == ["val_accuracy"]  # not "Objective 0"
    (tmp_path / "mlflow").mkdir()
    with tracking_server(tmp_path / "mlflow", postgres_db(), monkeypatch) as uri:
        assert requests.get(f"{uri}/health", timeout=10).ok


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_postgresql_with_an_mlflow_server(
    mnist_dir, mlflow_store, postgres_db, mlflow_server, tmp_path, space
):
    opts = options(tmp_path, space, n_trials=3, workers=2, storage=postgres_db())
    result = tune(opts)
    study = load(opts)
    assert len(study.trials) == 3 and result.trials_run == 3
    runs = trial_runs(result.parent_run_id)
    assert_consistent(study, runs)
    parent = MlflowClient().get_run(result.parent_run_id)
    assert parent.data.tags[names.TAG_STORAGE].startswith("postgresql://127.0.0.1")
    assert MlflowClient().get_metric_history(runs[0].info.run_id, names.VAL_ACCURACY)


def _claim_race(url: str, space: Path, claimants: int = 8) -> list[tuple[int, dict]]:
    """`claimants` threads, each with its own storage (its own database connections or file
    handle), claim "retrain" at the same instant."""
    open_study(open_storage(url), "claimed", load_space("cnn", space), {})
    studies = []
    for _ in range(claimants):
        storage = open_storage(url)
        studies.append((storage, optuna.load_study(study_name="claimed", storage=storage)))
    barrier = threading.Barrier(claimants)

    def claimant(me: int) -> tuple[int, dict]:
        storage, study = studies[me]
        barrier.wait()
        return me, claim(url, storage, study, "retrain:full:2", {"pid": me})

    with ThreadPoolExecutor(claimants) as pool:
        return list(pool.map(claimant, range(claimants)))


def _exactly_one_holds(results: list[tuple[int, dict]]) -> None:
    winners = [me for me, holder in results if holder == {"pid": me}]
    assert len(winners) == 1, results
    assert all(holder == {"pid": winners[0]} for _, holder in results)  # everyone knows who


def _file_storage(kind: str, folder: Path) -> str:
    return {
        "sqlite": f"sqlite:///{folder / 'optuna.db'}",
        "journal": f"journal:{folder / 'j.log'}",
    }[kind]


def test_only_public_optuna_apis():
    """A minor Optuna release may change its private modules and attributes: none is used
    (`storage.get_study_id_from_name` is a public storage method; `study._study_id` is not)."""
    private = re.compile(r"optuna\.storages\._|_rdb\b|(?<![A-Za-z0-9])_(study|trial)_id\b")
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for path in sorted((PROJECT_ROOT / "mnist_lab").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not found


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_claim_never_overwrites_the_holder(tmp_path, space, kind):
    """What makes it a claim and not Optuna's set_user_attr (an upsert: the last one wins)."""
    url = _file_storage(kind, tmp_path)
    storage = open_storage(url)
    study = open_study(storage, "claimed", load_space("cnn", space), {})
    assert claim(url, storage, study, "retrain:full:2", {"pid": 1}) == {"pid": 1}
    assert claim(url, storage, study, "retrain:full:2", {"pid": 2}) == {"pid": 1}
    again = optuna.load_study(study_name="claimed", storage=open_storage(url))
    assert again.user_attrs["retrain:full:2"] == {"pid": 1}
    # A failed retrain gives its claim back (only its holder can), and the next one takes it.
    release(url, storage, study, "retrain:full:2", {"pid": 2})
    assert claim(url, storage, study, "retrain:full:2", {"pid": 3}) == {"pid": 1}
    release(url, storage, study, "retrain:full:2", {"pid": 1})
    assert claim(url, storage, study, "retrain:full:2", {"pid": 3}) == {"pid": 3}
    # Another study of the same storage (a journal holds many) has claims of its own.
    other = open_study(storage, "other", load_space("cnn", space), {})
    assert claim(url, storage, other, "retrain:full:2", {"pid": 4}) == {"pid": 4}


def test_a_retrain_claimed_before_the_claims_table_still_holds(tmp_path, space):
    """Studies retrained by an older mnist_lab hold their claim as a study user attr (Optuna's
    own table): a re-run must not retrain them again."""
    from mnist_lab.tuning.tuner import TuneResult, _claim_the_retrain

    opts = options(tmp_path, space, retrain="full")
    storage = open_storage(opts.storage)
    study = open_study(storage, opts.name, load_space("cnn", space), {})
    study.set_user_attr("retrain:full:0", {"tune_run_id": "old", "host": "h", "pid": 1})
    result = TuneResult(opts.name, "new", 0, {}, 0.9, {}, 1.0)
    assert _claim_the_retrain(opts, storage, result) is None
    assert "held by tune run old (h, pid 1)" in result.retrain_note
    study.set_user_attr("retrain:full:0", {"released_by": {"tune_run_id": "old"}})
    assert _claim_the_retrain(opts, storage, result) == "retrain:full:0"  # released: taken


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_exactly_one_process_wins_a_claim(tmp_path, space, kind):
    _exactly_one_holds(_claim_race(_file_storage(kind, tmp_path), space))


@pytest.mark.postgres
def test_exactly_one_process_wins_a_claim_on_postgresql(postgres_db, space):
    _exactly_one_holds(_claim_race(postgres_db(), space))


@pytest.mark.slow
@pytest.mark.postgres
def test_two_tune_processes_sharing_a_study_retrain_it_once(
    mnist_dir, postgres_db, mlflow_server, tmp_path, space
):
    """The README's multi-machine recipe on one machine: two `tune` on one PostgreSQL study and
    one `mlflow server`. Exactly one retrains; the other says which tune run holds it."""
    storage = postgres_db()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "mnist_lab", "tune", "--space", str(space), *DATA_FLAGS]
    command += ["--storage", storage, "--n-trials", "4", "--retrain", "subset"]
    command += ["--pruner", "none", "--study-name", "shared"]
    tunes = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [t.communicate(timeout=600)[0] for t in tunes]
    assert [t.returncode for t in tunes] == [0, 0], "\n=====\n".join(outputs)[-6000:]
    retrains = [r for r in all_runs() if r.data.tags.get(names.TAG_TUNE_RUN_ID)]
    assert len(retrains) == 1, outputs
    said = "\n".join(outputs)
    assert said.count("retrained as run") == 1, said
    held = retrains[0].data.tags[names.TAG_TUNE_RUN_ID]
    assert said.count("not retrained here") == 1, said  # "held by tune run …" or "still running"
    assert held in said
    # Both started the study; one enqueued the defaults (the claim `defaults_trial`).
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert [t.number for t in trials if t.user_attrs.get("defaults_trial")] == [0], said
