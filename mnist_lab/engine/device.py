"""Where training runs: device choice, bf16 autocast, channels-last placement."""

from __future__ import annotations

import contextlib
import functools
import os
import platform

import torch
from torch import nn

from mnist_lab.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available here; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' but MPS is not available here; use --device cpu")
    return torch.device(name)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: taskset, a container's cpuset), which
    can be fewer than os.cpu_count(), the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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


def cpu_vector_units() -> str:
    """The widest vector units the CPU has, which set its arithmetic rate: AMX, AVX-512, AVX2.
    One model name ("AMD EPYC") covers CPUs of each kind."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        flags = []
    for flag, units in (("amx_bf16", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return units
    return platform.machine()


def machine_name(device: torch.device) -> str:
    """What a figure ran on: the GPU's name, or the CPU's model, vector units and usable cores
    ("AMD EPYC, AVX2, 2 cores")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {cpu_vector_units()}, {usable_cpus()} cores"


@functools.cache
def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (Intel AMX tiles)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where it was measured to pay: CUDA, and CPUs with AMX tiles (the CNN's epoch 1.6×
    faster on 2 Xeon cores). Other CPUs, with no bf16 units or only AVX512-BF16 dot products,
    were not measured faster, so None: no autocast, fp32."""
    if enabled and (device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_units())):
        return torch.bfloat16
    return None


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """`torch.autocast` to `amp_dtype(device, enabled)`, or a no-op where that is None."""
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device` with its 4-D weights stored channels-last (NHWC): the layout
    oneDNN and cuDNN convolve fastest; the activations then stay NHWC through the network
    (the CNN's CPU epoch 1.2× faster). Layers that are not convolutions do not notice."""
    return model.to(device, memory_format=torch.channels_last)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
