"""Distributed training on CPUs with Gloo: sharding, torch's launcher (`train --nproc-per-node`),
torchrun across two simulated machines, and the errors a user can make."""

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from lab_helpers import free_port
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab.config import load_config
from mnist_lab.data.loader import BatchLoader
from mnist_lab.data.scenes import SceneLoader
from mnist_lab.data.sharding import rank_slice, sharded_batches
from mnist_lab.engine import distributed
from mnist_lab.engine.classification import ClassificationTask
from mnist_lab.engine.loop import validate
from mnist_lab.errors import ConfigError
from mnist_lab.train import train

# Two epochs on 1 000 digits, no augmentation and no corruption suite: a minute on 2 cores.
SMALL = {
    "epochs": 2,
    "max_train_samples": 1000,
    "max_test_samples": 500,
    "val_size": 200,
    "batch_size": 100,
    "eval_batch_size": 500,
    "augment": False,
    "clean_final_epochs": 0,
    "robustness_samples": 0,
}
# A one-process run and a two-process run of the same global batch and seed differ only in
# BatchNorm's batch statistics (each rank normalises its half-batch), so their accuracies are
# close, not equal.
ACCURACY_TOLERANCE = 0.05
SCENE = {"canvas_size": 64, "min_scale": 0.8, "max_scale": 1.4}


def flags(settings: dict) -> list[str]:
    return [word for k, v in settings.items() for word in (f"--{k}", str(v))]


def runs() -> list:
    tracking.open_store()  # as the job does: whichever comes first makes the tables
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


@contextlib.contextmanager
def ended(*jobs: subprocess.Popen) -> Iterator[None]:
    """Whatever happens in the block, no job (or rank under it) outlives the test."""
    try:
        yield
    finally:
        for job in jobs:
            if job.poll() is None:
                for pid in descendants(job.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                job.kill()
                job.wait()


def cli(argv: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mnist_lab", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


# Sharding


@pytest.mark.parametrize(("n", "world_size"), [(10, 2), (7, 3), (2, 2), (5, 4)])
def test_rank_slices_cut_a_batch_into_contiguous_parts(n: int, world_size: int) -> None:
    parts = [rank_slice(3, 3 + n, r, world_size) for r in range(world_size)]
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(3, 3 + n))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_last_batch_smaller_than_the_world_is_dropped() -> None:
    assert sharded_batches(1000, 100, 4) == 10
    assert sharded_batches(1003, 100, 4) == 10  # 3 images for 4 ranks: dropped
    assert sharded_batches(1004, 100, 4) == 11


def test_the_ranks_batches_together_are_the_one_process_batches() -> None:
    """Same order, same augmentation (geometric ops draw per image, not per rank)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (250, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(250) % 10
    settings = {"batch_size": 64, "shuffle": True, "seed": 3, "augment": "shift:2,rotate:15"}
    whole = BatchLoader(images, labels, **settings)
    ranks = [BatchLoader(images, labels, **settings, rank=r, world_size=2) for r in range(2)]
    for loader in (whole, *ranks):
        loader.set_epoch(2)
    assert len(ranks[0]) == len(ranks[1]) == len(whole)
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *ranks, strict=True):
        assert torch.equal(torch.cat([y0, y1]), y)
        assert torch.allclose(torch.cat([x0, x1]), x)


@pytest.mark.parametrize(("n", "world_size"), [(250, 2), (7, 3), (3, 4)])
def test_the_ranks_evaluation_parts_cover_the_split_once(n: int, world_size: int) -> None:
    images = torch.randint(0, 255, (n, 28, 28), dtype=torch.uint8)
    whole = BatchLoader(images, torch.arange(n) % 10, batch_size=64)
    parts = [whole.rank_part(r, world_size) for r in range(world_size)]
    x = torch.cat([x for part in parts for x, _ in part])
    y = torch.cat([y for part in parts for _, y in part])
    assert torch.equal(x, torch.cat([x for x, _ in whole]))
    assert torch.equal(y, whole.labels)
    sizes = [part.labels.numel() for part in parts]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1


def test_the_ranks_scene_parts_are_the_one_process_scenes() -> None:
    """Scenes are laid out for the whole split and then cut, so each scene is the same."""
    images = torch.randint(0, 255, (30, 28, 28), dtype=torch.uint8)
    whole = SceneLoader(images, torch.arange(30) % 10, 8, **SCENE)
    parts = [whole.rank_part(r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [2, 2]  # 15 scenes each, in batches of 8
    scenes = [s for part in parts for s in part]
    assert torch.equal(torch.cat([s.images for s in scenes]), torch.cat([s.images for s in whole]))


def _validated_model() -> torch.nn.Module:
    """A model with BatchNorm statistics, in eval mode as validation runs it."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 10), torch.nn.BatchNorm1d(10)
    ).eval()


def _validate_on_two_ranks(rank: int, port: int, results: dict) -> None:
    import torch.distributed as dist

    model = _validated_model()
    with (
        torch.no_grad()
    ):  # each rank's own statistics, as after DDP steps; rank 0's are the model's
        model[2].running_mean += torch.arange(10.0) * rank  # moves the argmax
    images = torch.randint(0, 255, (101, 28, 28), generator=torch.Generator().manual_seed(1))
    loader = BatchLoader(images.to(torch.uint8), torch.arange(101) % 10, batch_size=16)
    task = ClassificationTask(load_config("cnn"))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results[rank] = validate(task, model, loader, False, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_validation_gives_every_rank_the_whole_splits_figures() -> None:
    """Of rank 0's model (its BatchNorm statistics are broadcast first), on the whole split."""
    model = _validated_model()
    images = torch.randint(0, 255, (101, 28, 28), generator=torch.Generator().manual_seed(1))
    loader = BatchLoader(images.to(torch.uint8), torch.arange(101) % 10, batch_size=16)
    whole = ClassificationTask(load_config("cnn")).evaluate(model, loader, False)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_validate_on_two_ranks, args=(free_port(), results), nprocs=2)
        results = dict(results)
    for loss, accuracy in results.values():
        assert loss == pytest.approx(whole.loss, rel=1e-5)
        assert accuracy == pytest.approx(whole.accuracy, abs=1e-12)


# Bad input


def test_nproc_per_node_must_be_a_positive_count(mlflow_store, capsys) -> None:
    from mnist_lab.cli import main

    for value in ("0", "-1", "two"):
        assert main(["train", "--nproc-per-node", value]) == 1
        assert "nproc_per_node" in capsys.readouterr().err
    assert runs() == []


def test_nccl_without_gpus_is_refused_before_any_process_starts(mlflow_store, capsys) -> None:
    from mnist_lab.cli import main

    argv = ["train", "--nproc-per-node", "2", "--device", "cpu", "--dist-backend", "nccl"]
    assert main(argv) == 1
    assert "dist_backend=nccl needs CUDA GPUs" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="nccl needs CUDA"):
        distributed.check_settings("nccl", False, torch.device("cpu"))


def test_a_world_larger_than_the_train_set_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"world size of 12 is larger than the 10 training"):
        distributed.check_world_size(12, 10)
    distributed.check_world_size(10, 10)


def test_sync_bn_on_cpus_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="sync_bn=true needs CUDA"):
        distributed.join(torch.device("cpu"), "auto", sync_bn=True)


def test_tune_refuses_distributed_training(mlflow_store, capsys, monkeypatch) -> None:
    from mnist_lab.cli import main

    assert main(["tune", "--nproc-per-node", "2"]) == 1
    assert "tune does not train distributed" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")  # started by torchrun
    assert main(["tune"]) == 1
    assert runs() == []


# Whole jobs


@pytest.mark.slow
def test_two_processes_log_one_run_that_matches_one_process(mnist_dir, mlflow_store) -> None:
    done = cli(["train", "--nproc-per-node", "2", *flags(SMALL)])
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs()
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert (tags[names.TAG_WORLD_SIZE], tags[names.TAG_BACKEND], tags[names.TAG_NNODES]) == (
        "2",
        "gloo",
        "1",
    )
    history = MlflowClient().get_metric_history(run.info.run_id, names.VAL_ACCURACY)
    assert [m.step for m in history] == [1, 2]  # once per epoch, not once per rank
    assert f"run {run.info.run_id}: test_accuracy" in done.stdout

    one = train(load_config("cnn", SMALL))
    two = run.data.metrics[names.TEST_ACCURACY]
    assert two > 0.8
    assert abs(two - one.metrics[names.TEST_ACCURACY]) <= ACCURACY_TOLERANCE


@pytest.mark.slow
def test_two_torchrun_nodes_on_localhost_rendezvous_and_log_one_run(mnist_dir, mlflow_store):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                endpoint,
                "--rdzv-id",
                "two-nodes",
                "-m",
                "mnist_lab",
                "train",
                *flags({**SMALL, "epochs": 1}),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        for node in (0, 1)
    ]
    with ended(*nodes):
        outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_NNODES] == "2" and run.data.tags[names.TAG_WORLD_SIZE] == "2"


# A rank that dies


def descendants(ancestor: int) -> list[int]:
    """The pids of every process under `ancestor`, in pid (so start) order."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [ancestor]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return sorted(found)


def rank_pid(ancestor: int, rank: int) -> int | None:
    """The pid of training rank `rank` under process `ancestor`. torchrun execs its ranks with
    RANK in their environment; torch's launcher spawns them (the environment is set after
    start, so invisible here) in rank order, so there the rank-th spawned process is it."""
    spawned = []
    for pid in descendants(ancestor):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"mnist_lab" in command:
            return pid
        if b"spawn_main" in command:
            spawned.append(pid)
    return spawned[rank] if len(spawned) > rank else None


def kill_rank_after_first_checkpoint(job: subprocess.Popen, rank: int = 1) -> str:
    """Wait for the job's run to store its first checkpoint, SIGKILL `rank`; the run id.

    It watches the artifact store's folder (the test's ./mlruns) every 20 ms rather than asking
    the tracking store: a query on a loaded worker took longer than the epochs left after the
    first checkpoint, and the job had finished before the kill (the AMX Xeon, 3 of 6 runs).
    """
    import signal
    import time

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None:
        found = list(Path.cwd().glob(f"mlruns/*/*/artifacts/{names.CHECKPOINT_LAST}"))
        if found:
            pid = rank_pid(job.pid, rank)
            assert job.poll() is None, (
                f"the job ended (exit {job.returncode}) before its first checkpoint was seen: "
                "training outran this poll; it needs more epochs on this machine"
            )
            assert pid is not None, f"no process of rank {rank} under torchrun {job.pid}"
            os.kill(pid, signal.SIGKILL)
            return found[0].parents[2].name  # mlruns/<experiment>/<run>/artifacts/checkpoints
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint before the deadline: {job.communicate()[1][-3000:]}")


# A kill lands before the end: after the first checkpoint come five epochs and the end-of-run
# report, seconds against the watch's 20 ms.
LONGER = {**SMALL, "epochs": 6, "max_train_samples": 1500}


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_and_resume_in_one_process_finishes_it(
    mnist_dir, mlflow_store
) -> None:
    import time

    command = [sys.executable, "-m", "mnist_lab", "train", "--nproc-per-node", "2"]
    job = subprocess.Popen(
        [*command, *flags(LONGER)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    with ended(job):
        run_id = kill_rank_after_first_checkpoint(job)
        killed_at = time.monotonic()
        _, err = job.communicate(timeout=distributed.COLLECTIVE_TIMEOUT_S + 60)
    assert job.returncode != 0
    assert time.monotonic() - killed_at < distributed.COLLECTIVE_TIMEOUT_S + 30
    assert "distributed training failed: rank 1" in err
    (run,) = runs()
    assert run.info.status in ("FAILED", "KILLED") and run.data.tags[names.TAG_FAILURE_REASON]

    # In one process: the checkpoint is the job's global state, so another world size goes on
    # from it (the torchrun restart below resumes at the same world size).
    done = cli(["train", "--resume", run_id])
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = runs()
    assert run.info.status == "FINISHED"
    history = MlflowClient().get_metric_history(run_id, names.VAL_ACCURACY)
    assert sorted(m.step for m in history) == list(range(1, LONGER["epochs"] + 1))


@pytest.mark.slow
def test_torchrun_restarts_a_job_whose_rank_died_into_the_same_run(mnist_dir, mlflow_store):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "--max-restarts", "1"]
    job = subprocess.Popen(
        [*command, "-m", "mnist_lab", "train", *flags(LONGER)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with ended(job):
        run_id = kill_rank_after_first_checkpoint(job)
        _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    assert f"resuming its run {run_id}" in err
    (run,) = runs()
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    history = MlflowClient().get_metric_history(run_id, names.VAL_ACCURACY)
    assert sorted(m.step for m in history) == list(range(1, LONGER["epochs"] + 1))
