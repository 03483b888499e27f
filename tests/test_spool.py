"""The spool of a run on a tracking server, against a fake client: records kept durably and in
order while the server is away, sent once when it answers."""

import json
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab.errors import LabError, StoreUnreachable
from mnist_lab.models.build import ModelSpec
from mnist_lab.tracking import runs
from mnist_lab.tracking.spool import Spool, SpoolWriter, replay_all, spools


class FakeServer:
    """MlflowClient's writing calls, into lists; `down` makes every call fail as an outage."""

    def __init__(self) -> None:
        self.down = False
        self.refuse = False
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def _check(self) -> None:
        if self.refuse:
            raise MlflowException("bad value", INVALID_PARAMETER_VALUE)
        if self.down:
            raise MlflowException("API request failed: Max retries exceeded (connection refused)")

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        self._check()
        with self.lock:
            for m in metrics:
                self.calls.append(("metric", run_id, m.key, m.value, m.timestamp, m.step))
            for p in params:
                self.calls.append(("param", run_id, p.key, p.value))
            for t in tags:
                self.calls.append(("tag", run_id, t.key, t.value))

    def log_artifact(self, run_id, local_path, artifact_path=None):
        self._check()
        with self.lock:
            self.calls.append(("artifact", run_id, Path(local_path).read_text(), artifact_path))

    def set_terminated(self, run_id, status, end_time=None):
        self._check()
        with self.lock:
            self.calls.append(("end", run_id, status, end_time))


def metrics_record(step: int) -> dict:
    return {"values": {"val_accuracy": step / 10}, "timestamp": 1000 + step, "step": step}


def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.01)


def test_records_reach_an_answering_server_in_order_and_the_spool_goes(tmp_path):
    server = FakeServer()
    writer = SpoolWriter(Spool.create(tmp_path, "run1", "http://x"), server)
    writer.add("params", {"values": {"lr": "0.001"}})
    for step in range(3):
        writer.add("metrics", metrics_record(step))
    assert writer.close(5.0)
    assert server.calls == [
        ("param", "run1", "lr", "0.001"),
        *[("metric", "run1", "val_accuracy", s / 10, 1000 + s, s) for s in range(3)],
    ]
    assert not (tmp_path / "run1").exists()


def test_an_away_server_does_not_hold_add_and_gets_everything_in_order_when_back(tmp_path):
    server = FakeServer()
    spool = Spool.create(tmp_path, "run1", "http://x")
    writer = SpoolWriter(spool, server, retry_s=0.05, probe=lambda uri: not server.down)
    writer.add("metrics", metrics_record(1))
    until(lambda: len(server.calls) == 1)
    server.down = True
    start = time.perf_counter()
    artifact = tmp_path / "last.pt"
    for step in range(2, 6):
        writer.add("metrics", metrics_record(step))
        artifact.write_text(f"checkpoint {step}")
        writer.add("artifact", {"name": "last.pt", "dir": "checkpoints"}, file=artifact)
    writer.add("end", {"status": "FINISHED", "end_time": 99})
    assert time.perf_counter() - start < 2.0  # no waiting on the server (fsyncs only)
    assert not writer.wait_sent(0.2)
    assert len(server.calls) == 1 and writer.away_since is not None
    server.down = False
    assert writer.close(10.0)
    expected = [("metric", "run1", "val_accuracy", 0.1, 1001, 1)]
    for step in range(2, 6):
        expected.append(("metric", "run1", "val_accuracy", step / 10, 1000 + step, step))
        expected.append(("artifact", "run1", f"checkpoint {step}", "checkpoints"))
    assert server.calls == [*expected, ("end", "run1", "FINISHED", 99)]


def test_a_record_the_server_refuses_is_raised_to_the_run(tmp_path):
    server = FakeServer()
    writer = SpoolWriter(Spool.create(tmp_path, "run1", "http://x"), server, retry_s=0.05)
    server.refuse = True
    writer.add("params", {"values": {"lr": "x"}})
    with pytest.raises(MlflowException, match="bad value"):
        writer.wait_sent(5.0)
    with pytest.raises(MlflowException, match="bad value"):
        writer.add("metrics", metrics_record(1))
    with pytest.raises(MlflowException):
        writer.close(0)


def test_a_killed_process_loses_nothing_it_spooled_and_a_torn_line_is_cut(tmp_path):
    spool = Spool.create(tmp_path, "run1", "http://server:5000")
    for step in range(3):
        spool.add("metrics", metrics_record(step))
    spool.mark_sent(spool.pending()[0])
    with (tmp_path / "run1" / "records.jsonl").open("a") as f:
        f.write('{"seq": 3, "kind": "metr')  # killed mid-write: never acknowledged
    reopened = Spool(tmp_path / "run1")
    assert reopened.tracking_uri == "http://server:5000"
    assert [r.data["step"] for r in reopened.pending()] == [1, 2]
    reopened.add("metrics", metrics_record(7))  # appends after the cut, on a line of its own
    lines = (tmp_path / "run1" / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2, 3]


def test_replay_sends_each_record_once_and_leaves_a_live_runs_spool_alone(tmp_path):
    server = FakeServer()
    left = Spool.create(tmp_path, "left", "http://x")
    for step in range(3):
        left.add("metrics", metrics_record(step))
    left.add("end", {"status": "FINISHED", "end_time": 5})
    live = SpoolWriter(Spool.create(tmp_path, "live", "http://x"), FakeServer())
    server.down = True
    failed = replay_all(lambda uri: server, tmp_path)
    assert {r.run_id: (r.sent, r.error is not None) for r in failed} == {
        "left": (0, True),
        "live": (0, True),
    }
    server.down = False
    first = {r.run_id: r for r in replay_all(lambda uri: server, tmp_path)}
    assert first["left"].sent == 4 and first["left"].error is None
    assert first["live"].error == "a live process holds it"
    assert [s.run_id for s in spools(tmp_path)] == ["live"]
    assert replay_all(lambda uri: server, tmp_path)[0].run_id == "live"  # nothing sent twice
    assert len(server.calls) == 4
    assert live.close(1.0)


def test_a_spool_folder_that_cannot_be_made_says_which_setting_moves_it(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LabError, match="MNIST_LAB_SPOOL_DIR to a writable folder"):
        Spool.create(tmp_path / "file", "run1", "http://x")


class FlakyStore:
    """A real MlflowClient of the test's SQLite store that, while `down`, fails every call as
    an unreachable server does; `fail_once` names a method whose next call fails that way."""

    def __init__(self) -> None:
        self.client = MlflowClient()
        self.down = False
        self.fail_once: str | None = None

    def __getattr__(self, name: str):
        method = getattr(self.client, name)

        def call(*args, **kwargs):
            if self.down or self.fail_once == name:
                self.fail_once = None
                raise MlflowException("API request failed: Max retries exceeded (refused)")
            return method(*args, **kwargs)

        return call


def logged_models(run_id: str) -> list[str]:
    client = MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models([experiment], filter_string=f"source_run_id='{run_id}'")
    return sorted(f"{m.name} {m.status}" for m in found)


def test_a_model_logged_while_the_server_is_away_reaches_the_run_once_by_sync(monkeypatch):
    """The run's end finds the server away: its models (pyfunc and ONNX), saved into the
    spool, are logged by `runs --sync` as a live run logs them, with the tags and metrics
    recorded for the run by id; a failure half way through a model and a second sync make no
    second model."""
    monkeypatch.setattr(runs, "is_remote", lambda uri: True)  # the test's store acts a server
    monkeypatch.setenv("MNIST_LAB_STORE_WAIT_S", "0.2")
    store = FlakyStore()
    torch.manual_seed(0)
    spec = ModelSpec("cnn", {"depth": 1, "width": 2})
    digits = (np.random.default_rng(0).random((16, 28, 28)) * 255).astype(np.uint8)
    with (
        pytest.raises(StoreUnreachable, match="runs --sync"),
        tracking.run(run_name="outage") as active,
    ):
        writer = runs._writers[active.info.run_id]
        writer.client, writer.probe, writer.retry_s = store, lambda uri: not store.down, 0.05
        tracking.log_params({"lr": 0.1})
        assert writer.wait_sent(10.0)
        store.down = True
        tracking.log_metrics({names.TEST_ACCURACY: 0.5})
        tracking.log_model(spec.build(), digits[:8].astype(np.float32) / 255, spec)
        tracking.log_onnx_model(spec.build(), digits, spec)
        # What a study records on its parent run, by id, while the parent is open.
        tracking.set_run_tags(active.info.run_id, {names.TAG_RETRAIN_RUN_ID: "r1"})
        tracking.log_run_metrics(active.info.run_id, {names.CONFIRM_P_VALUE: 0.5})
    run_id = active.info.run_id
    assert logged_models(run_id) == []  # all of it waits in the spool

    store.down, store.fail_once = False, "log_model_artifacts"
    (half,) = replay_all(lambda uri: store)
    assert half.error and logged_models(run_id) == ["model PENDING"]
    (rest,) = replay_all(lambda uri: store)
    assert rest.error is None and rest.sent > 0
    assert logged_models(run_id) == ["model READY", "onnx READY"]
    assert replay_all(lambda uri: store) == []  # the spool is gone: nothing is sent twice
    assert logged_models(run_id) == ["model READY", "onnx READY"]

    run = MlflowClient().get_run(run_id)
    assert run.data.params == {"lr": "0.1", "output": "frame", "chunk": "256"}
    assert names.model_sha256_tag(names.MODEL_ARTIFACT) in run.data.tags
    assert names.ONNX_MAX_PROB_DIFF in run.data.metrics
    assert run.data.tags[names.TAG_RETRAIN_RUN_ID] == "r1"
    assert run.data.metrics[names.CONFIRM_P_VALUE] == 0.5
    assert len(run.outputs.model_outputs) == 2
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    assert model.metadata.run_id == run_id
    assert "digit" in model.predict(digits[:4].astype(np.float32) / 255).columns
    assert tracking.load_onnx_model(tracking.onnx_model_uri(run_id))


class FakeTrials:
    """`train()` for a tuning trial, without the training: a nested run that logs two epochs
    through the spool. `end_away` names trials whose server is away from their last epoch on
    (their spool's client fails; the health check says no)."""

    def __init__(self, end_away: tuple[int, ...] = (), fail: tuple[int, ...] = ()) -> None:
        self.end_away, self.fail, self.store = end_away, fail, FlakyStore()

    def __call__(self, config, listeners, tags, run_name, **kwargs):
        from types import SimpleNamespace

        from mnist_lab.train import TrainResult

        trial = int(tags[names.TAG_TRIAL_NUMBER])
        with tracking.run(nested=True, run_name=run_name, tags=tags) as active:
            writer = runs._writers[active.info.run_id]
            writer.client, writer.retry_s = self.store, 0.05
            writer.probe = lambda uri: not self.store.down
            for epoch in (1, 2):
                if epoch == 2 and trial in self.end_away:
                    assert writer.wait_sent(10.0)  # the server has epoch 1, then goes away
                    self.store.down = True
                accuracy = 0.5 + trial / 10 + epoch / 100
                tracking.log_metrics({names.VAL_ACCURACY: accuracy}, step=epoch)
                for listener in listeners:
                    listener.on_epoch_end(
                        SimpleNamespace(epoch=epoch), {names.VAL_ACCURACY: accuracy}
                    )
                if epoch == 2 and trial in self.fail:
                    until(lambda: writer.away_since is not None)  # its sender met the outage
                    raise FloatingPointError("loss is nan")
        return TrainResult(active.info.run_id, {names.BEST_VAL_ACCURACY: accuracy}, accuracy, 2)


def val_steps(run_id: str) -> list[int]:
    return sorted(m.step for m in MlflowClient().get_metric_history(run_id, names.VAL_ACCURACY))


def study_on_a_server(monkeypatch, tmp_path, fake: FakeTrials, probe):
    """A 3-trial tiny study whose runs go through spools as on a tracking server: the test's
    store acts the server, `probe` its health check."""
    from tuning_helpers import TINY_SPACE, options

    from mnist_lab.tracking import spool
    from mnist_lab.tuning import tuner

    monkeypatch.setattr(runs, "is_remote", lambda uri: True)
    monkeypatch.setattr(runs, "RETRY_S", 0.01)
    monkeypatch.setattr(spool, "answers", probe)
    monkeypatch.setattr(tuner, "train", fake)
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    return options(tmp_path, space, n_trials=3)


def test_a_trial_started_while_the_server_is_away_waits_for_it(
    monkeypatch, tmp_path, mnist_dir, caplog
):
    """The server stops after trial 0 and answers again on the third health check: trial 1
    waits, saying so once, and the study ends with every trial complete and in MLflow."""
    from tuning_helpers import assert_consistent, load, trial_runs

    from mnist_lab.tuning.tuner import tune

    checks = {"no": 0}
    fake = FakeTrials()

    def probe(uri: str) -> bool:
        if not any(names.TAG_TRIAL_STATE in r.data.tags for r in trial_runs()):
            return True  # up until trial 0 has ended
        checks["no"] += 1
        return checks["no"] > 3

    opts = study_on_a_server(monkeypatch, tmp_path, fake, probe)
    caplog.set_level("WARNING", logger="mnist_lab.tracking.runs")
    result = tune(opts)
    assert caplog.text.count("waits for it") == 1 and "is back: trial 1" in caplog.text
    study = load(opts)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"] * 3
    found = trial_runs(result.parent_run_id)
    assert len(found) == 3
    assert_consistent(study, found)


def test_a_server_away_past_the_wait_stops_the_study_once_and_sync_then_tune_finish_it(
    monkeypatch, tmp_path, mnist_dir
):
    """Trial 1's server goes away in its last epoch and stays away past the wait: no later
    trial starts (none fails for it), the command's error names `runs --sync`, trial 1 does
    not count; sync sends its run (FAILED, saying why), and `tune` again completes the study."""
    from tuning_helpers import assert_consistent, load, trial_runs

    from mnist_lab.tuning.tuner import tune

    monkeypatch.setenv("MNIST_LAB_STORE_WAIT_S", "0.2")
    fake = FakeTrials(end_away=(1,))
    opts = study_on_a_server(monkeypatch, tmp_path, fake, lambda uri: not fake.store.down)
    with pytest.raises(StoreUnreachable, match="runs --sync"):
        tune(opts)
    states = [t.state.name for t in load(opts).get_trials()]
    assert states == ["COMPLETE", "FAIL"]  # trial 1 stopped the study; no trial 2
    (stopped,) = [r for r in trial_runs() if r.data.tags[names.TAG_TRIAL_NUMBER] == "1"]
    assert val_steps(stopped.info.run_id) == [1]  # epoch 2 and the end wait in its spool

    fake.store.down = False
    assert all(r.error is None for r in replay_all(lambda uri: fake.store))
    (stopped,) = [r for r in trial_runs() if r.data.tags[names.TAG_TRIAL_NUMBER] == "1"]
    assert stopped.info.status == "FAILED"
    assert "study stopped" in stopped.data.tags[names.TAG_FAILURE_REASON]
    assert val_steps(stopped.info.run_id) == [1, 2]  # each epoch once

    fake.end_away = ()
    tune(opts)  # goes on: trial 1 did not count, so two more trials make the three
    study = load(opts)
    assert [t.state.name for t in study.get_trials()] == [
        "COMPLETE",
        "FAIL",
        "COMPLETE",
        "COMPLETE",
    ]
    assert_consistent(study, trial_runs())


def test_a_trial_that_fails_while_the_server_is_away_reaches_it_when_back(
    monkeypatch, tmp_path, mnist_dir, caplog
):
    """Trial 1 fails by itself (a NaN loss) while the server is away; its run does not wait at
    its end, the tuner sends what it spooled once the server answers, and the study goes on."""
    from tuning_helpers import assert_consistent, load, trial_runs

    from mnist_lab.tuning.tuner import tune

    fake = FakeTrials(end_away=(1,), fail=(1,))
    checks = {"no": 0}

    def probe(uri: str) -> bool:
        if fake.store.down:
            checks["no"] += 1
            fake.store.down = checks["no"] <= 3  # back on the fourth health check
        return not fake.store.down

    opts = study_on_a_server(monkeypatch, tmp_path, fake, probe)
    caplog.set_level("WARNING", logger="mnist_lab.tracking.runs")
    result = tune(opts)
    study = load(opts)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert "spooled records wait for it" in caplog.text  # the tuner waited, not the run's end
    found = trial_runs(result.parent_run_id)
    assert_consistent(study, found)
    (failed,) = [r for r in found if r.data.tags[names.TAG_TRIAL_NUMBER] == "1"]
    assert "loss is nan" in failed.data.tags[names.TAG_FAILURE_REASON]
    assert val_steps(failed.info.run_id) == [1, 2]
    assert spools() == []
