"""`tune` (tuning/tuner.py, tuning/study.py): bad input refused before any trial, small studies
on tiny subsets, what lands in Optuna and MLflow, Ctrl-C, killed workers, shared studies,
`mlflow run -e tune`, PostgreSQL and an `mlflow server`.

Studies run 2-4 trials of a tiny CNN on a few hundred images. SQLite and journal storages run
everywhere; PostgreSQL where MNIST_LAB_TEST_POSTGRES_URL is set, each test in a database of its
own that is dropped afterwards."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import requests
from lab_helpers import free_port, server_process, tracking_server
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tuning_helpers import (
    DATA_FLAGS,
    FINAL,
    TINY_SPACE,
    all_runs,
    assert_consistent,
    load,
    no_runs,
    options,
    trial_runs,
)

from mnist_lab import names, tracking
from mnist_lab.cli import main
from mnist_lab.config import PROJECT_ROOT, load_config
from mnist_lab.tuning.space import load_space
from mnist_lab.tuning.study import open_storage, open_study
from mnist_lab.tuning.tuner import TuneOptions, tune

# --- bad input: exit 1 before any trial or run -----------------------------------------------


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
def test_bad_input_exits_1_before_any_trial(mlflow_store, tmp_path, capsys, argv, message):
    storage = ["--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    assert main(["tune", *storage, *DATA_FLAGS, *argv]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "secret" not in err
    assert no_runs(tmp_path)


def test_malformed_space_file_exits_1(mlflow_store, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {lr: {type: float, low: 1}}")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["tune", "--space", str(bad), "--storage", storage]) == 1
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
    assert parent.data.tags[names.TAG_CONFIRM_TEST] == "t over seeds × digits"
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


def _wait_for_an_epoch_of_a_running_trial(opts: TuneOptions, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with __import__("contextlib").suppress(Exception):
            trials = load(opts).trials
            if any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials):
                return
        time.sleep(0.1)
    raise AssertionError(f"no running trial reported an epoch within {timeout} s")


@pytest.mark.slow
def test_ctrl_c_leaves_a_consistent_study_that_a_rerun_continues(
    mnist_dir, mlflow_store, tmp_path, space
):
    # Long enough a trial (a tenth of a second an epoch) that the signal lands in its training.
    space.write_text(TINY_SPACE.replace("epochs: 2", "epochs: 40"))
    opts = options(tmp_path, space, n_trials=3)
    process = _cli(tmp_path, space, "--n-trials", "3", "--pruner", "none")
    _wait_for(opts, TrialState.COMPLETE, 1)
    _wait_for_an_epoch_of_a_running_trial(opts)
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
    # Inside the trial, once its run names its process: killed before that, no sweep could
    # tell the run's process is gone, and only the heartbeat retry would end it.
    while not [
        r
        for r in trial_runs()
        if r.info.status == "RUNNING" and names.TAG_PROCESS_PID in r.data.tags
    ]:
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


# --- PostgreSQL and an mlflow server ---------------------------------------------------------


@pytest.mark.slow
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
