"""Whether a run had its cores to itself: the share of its CPUs' time that other processes used
while it trained (Linux's per-CPU counters, through psutil). A run's seconds are the recipe's
cost only when that share is small; `report` shows times only for such runs."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

# Other processes' share of this run's CPUs below which the run counts as alone.
ALONE_BELOW = 0.10


@dataclass(frozen=True)
class CpuClock:
    wall: float  # seconds, monotonic
    busy: float  # CPU seconds all processes spent on this process's CPUs
    own: float  # CPU seconds this process (and its waited-for children) spent


def read_clock() -> CpuClock:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    per_cpu = psutil.cpu_times(percpu=True)
    chosen = [per_cpu[i] for i in cpus if i < len(per_cpu)] if cpus else per_cpu
    busy = sum(t.user + t.system + getattr(t, "nice", 0.0) for t in chosen)
    own = psutil.Process().cpu_times()
    own_s = own.user + own.system + own.children_user + own.children_system
    return CpuClock(time.monotonic(), busy, own_s)


def others_share(start: CpuClock, end: CpuClock, cpus: int) -> float:
    """The share of `cpus` CPUs' time between the two readings that other processes used
    (0: the run was alone, 1: others kept every core busy)."""
    wall = max(end.wall - start.wall, 1e-9)
    others = (end.busy - start.busy) - (end.own - start.own)
    return min(max(others / (wall * cpus), 0.0), 1.0)
