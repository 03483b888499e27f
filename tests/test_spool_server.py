"""A run on a real `mlflow server` that is stopped mid-training: the run goes on, and the
server ends up with all of it, either when it returns during the run or by `runs --sync`."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from lab_helpers import answers, free_port, mlflow_at, new_server_store, venv_env
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab.cli import main
from mnist_lab.config import PROJECT_ROOT, load_config
from mnist_lab.engine.loop import TrainState
from mnist_lab.errors import StoreUnreachable
from mnist_lab.train import train

EPOCHS = 4
SMALL = {
    "epochs": EPOCHS,
    "max_train_samples": 300,
    "max_test_samples": 100,
    "val_size": 100,
    "robustness_samples": 10,
}


class Server:
    """`mlflow server` on one loopback port over one SQLite file: stop it, start it again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        database = self.folder / "server.db"
        backend = f"sqlite:///{database}" if database.exists() else new_server_store(database)
        command += ["--backend-store-uri", backend]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        log = (self.folder / "server.log").open("a")
        env = venv_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, env=env
        )
        deadline = time.monotonic() + 120
        while not answers(f"{self.uri}/health"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up: {(self.folder / 'server.log').read_text()}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None


class Outage:
    """Engine listener: stops the server after epoch `stop_after`, starts it after `back_after`."""

    def __init__(self, server: Server, stop_after: int, back_after: int | None) -> None:
        self.server, self.stop_after, self.back_after = server, stop_after, back_after

    def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        if state.epoch == self.stop_after:
            self.server.stop()
        elif state.epoch == self.back_after:
            self.server.start()


@pytest.fixture
def server(tmp_path, monkeypatch):
    server = Server(tmp_path)
    server.start()
    monkeypatch.setenv("MNIST_LAB_SPOOL_DIR", str(tmp_path / "spool"))
    # The call that meets the outage first fails in seconds rather than MLflow's minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    try:
        with mlflow_at(server.uri, tmp_path, monkeypatch):
            yield server
    finally:
        server.stop()


def assert_whole(run_id: str, status: str) -> None:
    """Every epoch's metrics once at its step, the last checkpoint, and the run's `status`."""
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == status, run.data.tags.get(names.TAG_FAILURE_REASON)
    for key in (names.VAL_ACCURACY, names.TRAIN_LOSS):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
    artifacts = {f.path for f in client.list_artifacts(run_id, names.CHECKPOINT_DIR)}
    assert names.CHECKPOINT_LAST in artifacts


@pytest.mark.slow
def test_a_run_trains_through_an_outage_and_ends_whole_on_the_server(
    server, tmp_path, mnist_dir, caplog
):
    caplog.set_level("WARNING", logger="mnist_lab.tracking.spool")
    config = load_config("cnn", SMALL)
    result = train(config, listeners=(Outage(server, stop_after=1, back_after=3),))
    assert "did not answer" in caplog.text and "is back after" in caplog.text  # it was away
    assert_whole(result.run_id, "FINISHED")
    client = MlflowClient()
    assert client.get_run(result.run_id).data.metrics[names.TEST_ACCURACY] > 0.1
    assert client.list_artifacts(result.run_id, "plots")
    assert mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    assert not (tmp_path / "spool" / result.run_id).exists()  # all sent: the spool is gone


@pytest.mark.slow
def test_a_server_that_does_not_return_leaves_a_spool_that_sync_sends_once(
    server, tmp_path, monkeypatch, mnist_dir, capsys
):
    monkeypatch.setenv("MNIST_LAB_STORE_WAIT_S", "2")
    config = load_config("cnn", SMALL)
    with pytest.raises(StoreUnreachable, match="runs --sync") as raised:
        train(config, listeners=(Outage(server, stop_after=1, back_after=None),))
    spooled = [f for f in (tmp_path / "spool").iterdir() if (f / "records.jsonl").exists()]
    assert len(spooled) == 1
    run_id = spooled[0].name
    assert run_id in str(raised.value)
    capsys.readouterr()

    assert main(["runs", "--sync"]) != 0  # still away: says so, sends nothing
    assert "still spooled" in capsys.readouterr().out
    server.start()
    assert main(["runs", "--sync"]) == 0
    assert f"{run_id}  {server.uri}: sent" in capsys.readouterr().out
    # The run ends as it would have without the outage: every epoch, its test metrics, its
    # reports and both its models.
    assert_whole(run_id, "FINISHED")
    run = MlflowClient().get_run(run_id)
    assert (
        run.data.metrics[names.TEST_ACCURACY] > 0.1
        and names.TAG_FAILURE_REASON not in run.data.tags
    )
    assert MlflowClient().list_artifacts(run_id, "plots")
    assert mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert tracking.load_onnx_model(tracking.onnx_model_uri(run_id))
    assert main(["runs", "--sync"]) == 0
    assert "nothing spooled" in capsys.readouterr().out
    assert_whole(run_id, "FINISHED")  # nothing sent twice
    assert len(MlflowClient().get_run(run_id).outputs.model_outputs) == 2


def unsent_steps(spool: Path) -> set[int]:
    """The epochs whose `val_accuracy` the spool holds and the server does not have yet."""

    def lines(name: str) -> list[dict]:
        text = (spool / name).read_text() if (spool / name).exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]

    sent = {line["seq"] for line in lines("sent.jsonl")}
    return {
        r["data"]["step"]
        for r in lines("records.jsonl")
        if r["seq"] not in sent
        and r["kind"] == "metrics"
        and names.VAL_ACCURACY in r["data"]["values"]
    }


@pytest.mark.slow
def test_kill_9_during_an_outage_loses_nothing_spooled(server, tmp_path, mnist_dir):
    command = [sys.executable, "-m", "mnist_lab", "train", "--model", "cnn", "--epochs", "30"]
    command += ["--max-train-samples", "300", "--val-size", "100", "--max-test-samples", "100"]
    log = (tmp_path / "train.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}  # this checkout's mnist_lab
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    client = MlflowClient()
    run_id, deadline = None, time.monotonic() + 300
    while run_id is None or not client.get_metric_history(run_id, names.VAL_ACCURACY):
        assert child.poll() is None and time.monotonic() < deadline, (
            tmp_path / "train.log"
        ).read_text()
        time.sleep(0.2)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        run_id = runs[0].info.run_id if runs else None
    server.stop()
    spool = tmp_path / "spool" / run_id
    while len(unsent_steps(spool)) < 2:  # epochs recorded while the server was away
        assert child.poll() is None, (tmp_path / "train.log").read_text()
        time.sleep(0.1)
    child.kill()
    child.wait()
    spooled = unsent_steps(spool)
    server.start()
    assert main(["runs", "--sync"]) == 0
    history = client.get_metric_history(run_id, names.VAL_ACCURACY)
    steps = {m.step for m in history}
    assert spooled <= steps and len(steps) == len(history)  # all there, none twice
    assert not spool.exists()


@pytest.mark.slow
def test_a_studys_trials_record_through_the_spool(server, tmp_path, mnist_dir):
    from tuning_helpers import TINY_SPACE, assert_consistent, load, options, trial_runs

    from mnist_lab.tuning.tuner import tune

    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    opts = options(tmp_path, space, n_trials=2)
    result = tune(opts)
    runs = trial_runs(result.parent_run_id)
    assert len(runs) == 2
    assert_consistent(load(opts), runs)
    for run in runs:
        history = MlflowClient().get_metric_history(run.info.run_id, names.VAL_ACCURACY)
        assert [m.step for m in history] == [1, 2]
    assert not any((tmp_path / "spool").iterdir())  # every trial's spool was sent and removed


@pytest.mark.slow
def test_a_study_goes_on_through_outages_and_every_trial_ends_whole(
    server, tmp_path, monkeypatch, mnist_dir, caplog
):
    """The server stops after trial 1's first epoch and starts again while the trial trains
    on; it stops again once trial 1 has ended, so trial 2 waits to start. Every trial
    completes, its run whole on the server under the study's parent run."""
    import threading

    from tuning_helpers import TINY_SPACE, assert_consistent, load, options, trial_runs

    from mnist_lab.tuning import tuner

    restarts: list[threading.Thread] = []

    def outage() -> None:
        server.stop()
        restarts.append(threading.Thread(target=server.start))  # up again in seconds
        restarts[-1].start()

    class StopInEpoch1:
        def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
            if state.epoch == 1:
                outage()

    def train_with_outage(config, listeners, tags, **kwargs):
        if tags[names.TAG_TRIAL_NUMBER] == "1":
            listeners = (*listeners, StopInEpoch1())
        return train(config, listeners=listeners, tags=tags, **kwargs)

    mark_trial_run = tracking.mark_trial_run

    def mark_then_stop(run_id: str, state: str, *args) -> None:
        mark_trial_run(run_id, state, *args)
        if MlflowClient().get_run(run_id).data.tags[names.TAG_TRIAL_NUMBER] == "1":
            restarts[-1].join()
            outage()  # between trial 1 and trial 2

    monkeypatch.setattr(tuner, "train", train_with_outage)
    monkeypatch.setattr(tracking, "mark_trial_run", mark_then_stop)
    caplog.set_level("WARNING", logger="mnist_lab.tracking")
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    opts = options(tmp_path, space, n_trials=3)
    result = tuner.tune(opts)
    for thread in restarts:
        thread.join()
    assert len(restarts) == 2  # both outages happened
    assert "trial 2 of study" in caplog.text and "waits for it" in caplog.text
    study = load(opts)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
    runs = trial_runs(result.parent_run_id)
    assert len(runs) == 3
    assert_consistent(study, runs)
    for run in runs:
        history = MlflowClient().get_metric_history(run.info.run_id, names.VAL_ACCURACY)
        assert [m.step for m in history] == [1, 2]  # every epoch, once
    assert not any((tmp_path / "spool").iterdir())  # all sent
