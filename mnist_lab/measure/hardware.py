"""What a figure ran on: the CPU model and core count, or the GPU, and the precision; and the
machine's own limit, the dense-matmul TFLOP/s a run's utilisation is a fraction of."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time

import torch

from mnist_lab.engine.device import amp_dtype, machine_name, resolve_device, synchronize


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bf16, torch {torch.__version__}"
    precision = "bf16 where amp is on" if amp_dtype(device, enabled=True) else "fp32"
    return f"{machine_name(device)}, {precision}, torch {torch.__version__}"


@functools.cache
def peak_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """The best TFLOP/s of `repeats` timed n×n matmuls in `dtype` on `device`, 2·n³ FLOPs each
    (n = 4096 on a CPU, 8192 on a GPU), after a warm-up: what dense arithmetic reaches here,
    with the threads this process has. Counted once per device and dtype; call it before any
    training, while nothing else (a background upload) shares the cores. At n = 2048 an AMD
    EPYC's sgemm read below what its convolutions then achieved."""
    n = 8192 if device.type == "cuda" else 4096
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def start_bench(device_name: str | None) -> str:
    """What every bench script does first: log progress to stderr, put its runs in the
    experiment `mnist-lab-bench` unless MLFLOW_EXPERIMENT_NAME says otherwise, time the
    machine's matmul peak before any run starts (in the dtype the configs' amp gives), and
    print the hardware line (fp32's peak is timed too, for configs with amp off). Returns
    that line's hardware description."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "mnist-lab-bench")
    device = resolve_device(device_name or "auto")
    machine = hardware(device)
    peak = peak_tflops(device, amp_dtype(device, enabled=True) or torch.float32)
    peak_tflops(device, torch.float32)  # what amp: false configs (faster_rcnn) train in
    print(f"hardware: {machine}; dense matmul peak {peak:.2f} TFLOP/s", flush=True)
    return machine
