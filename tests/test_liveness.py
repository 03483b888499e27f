"""No run left RUNNING: a run records its process and heartbeat; a run whose process is
provably gone is ended KILLED by the next train/tune/benchmark or by `runs --stale --fix`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab.cli import main
from mnist_lab.config import PROJECT_ROOT, load_config
from mnist_lab.tracking.liveness import (
    STALE_AFTER_S,
    Heartbeat,
    Machine,
    process_start,
    process_tags,
    this_machine,
    why_stale,
)
from mnist_lab.train import resume, train

TINY = {"epochs": 1, "max_train_samples": 200, "max_test_samples": 100, "val_size": 100}


def dead_pid() -> int:
    """A pid that no process holds: the highest free one (pids are handed out upwards, so it is
    the last to be taken). Found, not made by a child, so these tests stay in this process."""
    pid_max = Path("/proc/sys/kernel/pid_max")
    for pid in range(int(pid_max.read_text()) - 1 if pid_max.exists() else 99_999, 1, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            continue
    raise AssertionError("every pid is taken")


def test_a_run_of_a_live_process_is_not_stale():
    tags = process_tags()
    assert why_stale(tags, time.time(), this_machine()) is None
    assert tags[names.TAG_PROCESS_STARTED] == process_start(os.getpid())


def test_a_dead_pid_on_this_machine_is_stale_at_once():
    tags = {**process_tags(), names.TAG_PROCESS_PID: str(dead_pid())}
    assert "is gone" in why_stale(tags, time.time(), this_machine())


def test_a_reused_pid_is_told_apart_by_its_start_time():
    tags = {**process_tags(), names.TAG_PROCESS_STARTED: "1"}  # our pid, another start
    assert "belongs to another" in why_stale(tags, time.time(), this_machine())


def test_another_machine_is_judged_by_its_heartbeat_only():
    elsewhere = Machine("other-host", "other-boot/pid:[1]")
    tags = {**process_tags(), names.TAG_PROCESS_PID: str(dead_pid())}
    now = time.time()
    assert why_stale(tags, now, elsewhere) is None  # its pid means nothing here
    late = now + STALE_AFTER_S + 60
    assert "no heartbeat" in why_stale(tags, late, elsewhere)


def test_a_run_without_process_tags_is_never_judged():
    assert why_stale({}, time.time() + 10 * STALE_AFTER_S, this_machine()) is None


def test_the_heartbeat_moves(mlflow_store):
    import mlflow

    with tracking.run() as run:
        mlflow.set_tag(names.TAG_PROCESS_HEARTBEAT, "0")
        with Heartbeat(run.info.run_id, interval=0.05):
            time.sleep(0.5)
    beat = MlflowClient().get_run(run.info.run_id).data.tags[names.TAG_PROCESS_HEARTBEAT]
    assert float(beat) > time.time() - 60


TRAIN_LOG = "train.log"  # in the test's folder: what the child said, for a failure's message


def _start_training(extra: list[str]) -> subprocess.Popen:
    flags = ["--max-train-samples", "2000", "--val-size", "100", "--max-test-samples", "100"]
    flags += ["--robustness-samples", "0"]  # a resumed run's end: no corruption suite to wait for
    command = [sys.executable, "-m", "mnist_lab", "train", "--epochs", "50", *flags, *extra]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    with open(TRAIN_LOG, "w") as log:
        return subprocess.Popen(command, env=env, stderr=log)


def _running_run_with_a_checkpoint(process: subprocess.Popen) -> str:
    tracking.open_store()  # as the child does: whichever comes first makes the tables
    client, deadline = MlflowClient(), time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            said = Path(TRAIN_LOG).read_text()[-3000:]
            raise AssertionError(f"no epoch finished (exit code {process.poll()}):\n{said}")
        experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
        for run in client.search_runs([experiment.experiment_id]) if experiment else []:
            if client.list_artifacts(run.info.run_id, names.CHECKPOINT_DIR):
                return run.info.run_id
        time.sleep(0.2)


@pytest.mark.slow
def test_kill_9_leaves_a_running_run_that_runs_stale_fix_ends(mnist_dir, mlflow_store, capsys):
    process = _start_training([])
    run_id = _running_run_with_a_checkpoint(process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it

    assert main(["runs", "--stale"]) == 0
    assert run_id in capsys.readouterr().out
    assert client.get_run(run_id).info.status == "RUNNING"  # listing changes nothing
    assert main(["runs", "--stale", "--fix"]) == 0
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert f"pid {process.pid}" in run.data.tags[names.TAG_FAILURE_REASON]
    assert run.info.end_time is not None
    assert main(["runs", "--stale"]) == 0
    assert "no stale runs" in capsys.readouterr().out


@pytest.mark.slow
def test_the_next_train_ends_a_killed_process_run_and_resume_finishes_it(mnist_dir, mlflow_store):
    process = _start_training(["--epochs", "3"])
    run_id = _running_run_with_a_checkpoint(process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    other = train(load_config("cnn", {**TINY, "robustness_samples": 0}))
    client = MlflowClient()
    killed = client.get_run(run_id)
    assert killed.info.status == "KILLED"
    assert "stale" in killed.data.tags[names.TAG_FAILURE_REASON]
    assert client.get_run(other.run_id).info.status == "FINISHED"

    result = resume(run_id)
    resumed = client.get_run(run_id)
    assert result.run_id == run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags[names.TAG_PROCESS_PID] == str(os.getpid())


def test_a_resumed_run_is_not_swept_while_it_reopens(mlflow_store):
    """The run being resumed carries its dead process's tags until it is re-opened."""
    with tracking.run() as run:
        pass
    client = MlflowClient()
    client.set_tag(run.info.run_id, names.TAG_PROCESS_MACHINE, this_machine().key)
    client.set_tag(run.info.run_id, names.TAG_PROCESS_PID, str(dead_pid()))
    client.update_run(run.info.run_id, status="RUNNING")
    with tracking.run(run_id=run.info.run_id):
        pass
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_runs_needs_a_question(capsys):
    assert main(["runs"]) == 1
    assert "--stale" in capsys.readouterr().err
