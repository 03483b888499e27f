"""Data-parallel training with PyTorch's own engine.

`torchrun` (or `train --nproc-per-node N`, through torch's `elastic_launch`) starts one process
per rank and sets RANK, WORLD_SIZE, LOCAL_RANK, ... ; `join()` turns those into a c10d process
group (NCCL on GPUs, Gloo on CPUs) and `fit` wraps the model in DistributedDataParallel, which
averages gradients across ranks after every backward pass.

The data stays device-resident: every rank holds the whole split and cuts its own part of
each global batch (data/sharding.py), so an epoch's shuffled order and augmentation are the ones
a one-process run would have, every training image is used once per epoch across ranks, and
the global batch is `batch_size` with the config's learning rate unchanged. Validation covers
the full split, sharded: each rank evaluates its contiguous part and the sums are all-reduced
(engine/loop.py `validate`), so every rank holds the one-process figures and all agree on the
best epoch and on early stopping. Only rank 0 tests, and only rank 0 talks to MLflow.
"""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from mnist_lab.engine.device import usable_cpus
from mnist_lab.errors import ConfigError

log = logging.getLogger(__name__)

# A rank that waits longer than this in a collective (its peer died or hangs) raises instead
# of hanging: the job then fails and its run ends FAILED.
COLLECTIVE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Rank:
    """This process's place in a distributed job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    nnodes: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def requested_world_size() -> int:
    """WORLD_SIZE as torchrun set it (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def join(device: torch.device, backend: str = "auto", sync_bn: bool = False) -> Rank | None:
    """Join the process group of a torchrun job, or None for a one-process run (a torchrun
    job of one process included). `device` is where this rank trains (`rank_device`)."""
    world_size = requested_world_size()
    if world_size <= 1:
        return None
    backend = check_settings(backend, sync_bn, device)
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.type == "cpu":
        # torchrun sets OMP_NUM_THREADS=1; the cores are better shared out between the ranks.
        torch.set_num_threads(max(1, usable_cpus() // local_world_size))
    if not dist.is_initialized():
        dist.init_process_group(
            backend,
            store=_attempt_store(),
            rank=int(os.environ["RANK"]),
            world_size=world_size,
            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
            device_id=device if device.type == "cuda" else None,
        )
    rank = Rank(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=local_world_size,
        nnodes=world_size // max(local_world_size, 1),
        backend=backend,
    )
    log.debug("rank %d of %d joined (%s)", rank.rank, rank.world_size, backend)
    return rank


def _attempt_store() -> dist.Store:
    """The store the ranks meet in: torchrun's, under a prefix of its own per restart.

    torchrun's agent serves one store for the whole job (shared with its rendezvous), so after
    a `--max-restarts` restart the keys of the failed attempt are still there, and Gloo would
    connect to the dead ranks' addresses and hang (github.com/pytorch/pytorch/issues/135712).
    Elsewhere (a plain MASTER_ADDR/MASTER_PORT launch) rank 0 hosts a fresh store, as `env://`
    does."""
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        host,
        port,
        world_size=requested_world_size(),
        is_master=not agent and int(os.environ["RANK"]) == 0,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"mnist-lab/attempt-{attempt}", store)


def check_settings(backend: str, sync_bn: bool, device: torch.device) -> str:
    """The c10d backend for training on `device`: "auto" → NCCL on GPUs, Gloo on CPUs. NCCL or
    SyncBatchNorm asked for without a GPU is a ConfigError."""
    if sync_bn and device.type != "cuda":
        raise ConfigError(
            f"sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm), and training runs on "
            f"{device} here; leave sync_bn false on CPUs"
        )
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError(
            f"dist_backend=nccl needs CUDA GPUs, and training runs on {device} here; use "
            "dist_backend=gloo (or auto) on CPUs"
        )
    return backend


def check_world_size(world_size: int, train_images: int) -> None:
    """Every rank needs a part of each batch: no more ranks than training images."""
    if world_size > train_images:
        raise ConfigError(
            f"a world size of {world_size} is larger than the {train_images} training images: "
            "every rank needs a part of each batch; start fewer processes or train on more "
            "images (max_train_samples)"
        )


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_device(device: torch.device) -> torch.device:
    """The GPU of this rank (cuda:LOCAL_RANK) in a multi-process CUDA job, else `device`."""
    if device.type == "cuda" and device.index is None and requested_world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place (itself outside a distributed job)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) copied to every rank, in place."""
    if dist.is_available() and dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def launch(nproc_per_node: int, entrypoint: Callable[..., Any], *args: Any) -> Any:
    """Run `entrypoint(*args)` in `nproc_per_node` processes on this machine, as
    `torchrun --standalone --nproc-per-node N` would: through torch's own elastic launcher
    (c10d rendezvous on a free local port, no restarts). Returns rank 0's return value; a rank
    that fails raises ChildFailedError naming it. `nproc_per_node` >= 1: the CLI checks it."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc_per_node,
        run_id=f"mnist-lab-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
    )
    return elastic_launch(config, entrypoint)(*args)[0]
