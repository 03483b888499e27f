"""What a figure ran on: the CPU model and core count, or the GPU, and the precision."""

from __future__ import annotations

import os
import platform

import torch

from mnist_lab.engine.device import amp_dtype


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, bf16, torch {torch.__version__}"
    precision = "AMX: bf16 where amp is on" if amp_dtype(device, enabled=True) else "fp32"
    return f"{cpu_name()}, {os.cpu_count()} cores, {precision}, torch {torch.__version__}"
