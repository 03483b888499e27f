"""Where training runs: device choice, bf16 autocast, channels-last placement."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass

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


def cpuinfo(*keys: str) -> str | None:
    """The value of the first line of Linux's /proc/cpuinfo that starts with one of `keys`;
    None where there is no such line or file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(keys):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


@dataclass(frozen=True)
class CpuPrecision:
    """One row of the CPU precision rule: the CPU flag and vendor (None: any) that select it, how
    the machine tag names the CPU's units, what `amp` trains in there (None: no autocast, fp32),
    and why."""

    flag: str
    vendor: str | None
    units: str
    dtype: torch.dtype | None
    why: str


# The CPU precision rule, one place: the first row whose flag the CPU has and whose vendor it is
# (Linux's /proc/cpuinfo) decides; a CPU with none of them trains in fp32. bf16 pays only where
# the CPU multiplies bf16 faster than fp32, which the flag alone does not say: AVX-512's bf16
# dot products pay on AMD's cores and cost on Intel's. Per architecture: Faster R-CNN keeps fp32
# on every device (`amp: false` in its config: bf16 gave a NaN validation loss in a short run).
CPU_PRECISION = (
    CpuPrecision(
        "amx_bf16",
        None,
        "AMX",
        torch.bfloat16,
        "AMX tiles: a bf16 step takes 0.33 (AlexNet), 0.47 (VGG16), 0.69 (CNN) of fp32's, the "
        "ViT's ties (1.04); test accuracy ties fp32's at 3 seeds (results/precision.md, "
        "results/time-to-accuracy.md)",
    ),
    CpuPrecision(
        "avx512_bf16",
        "AuthenticAMD",
        "AVX-512, avx512_bf16",
        torch.bfloat16,
        "AMD's bf16 dot products: a bf16 step takes 0.51 (VGG16) to 0.83 (ViT) of fp32's on an "
        "AMD EPYC (results/precision.md)",
    ),
    CpuPrecision(
        "avx512_bf16",
        None,
        "AVX-512, avx512_bf16",
        None,
        "Intel's bf16 dot products without AMX are slower than its fp32 FMAs: a bf16 step takes "
        "1.19 (CNN) to 1.56 (AlexNet) of fp32's, a 2048² bf16 matmul 0.56 of fp32's rate, on an "
        "Intel Xeon whose VM hides AMX (results/precision.md)",
    ),
    CpuPrecision("avx512f", None, "AVX-512", None, "no bf16 multiply"),
    CpuPrecision("avx2", None, "AVX2", None, "no bf16 multiply"),
)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux's /proc/cpuinfo lists them (`flags` on x86, `Features`
    on ARM); empty where there is no such file."""
    return frozenset((cpuinfo("flags", "Features") or "").split())


@functools.cache
def cpu_vendor() -> str:
    """The CPU's vendor as Linux's /proc/cpuinfo names it ("GenuineIntel", "AuthenticAMD");
    empty where there is no such line."""
    return cpuinfo("vendor_id") or ""


def cpu_precision(flags: frozenset[str], vendor: str) -> CpuPrecision:
    """The row of CPU_PRECISION a CPU of `vendor` with `flags` falls under; fp32 where no row
    matches (ARM, unknown CPUs: bf16 not measured there)."""
    for row in CPU_PRECISION:
        if row.flag in flags and row.vendor in (None, vendor):
            return row
    return CpuPrecision("", None, platform.machine(), None, "bf16 not measured on this CPU")


def this_cpu_precision() -> CpuPrecision:
    """The rule's row for the CPU this process runs on."""
    return cpu_precision(cpu_flags(), cpu_vendor())


def cpu_vector_units() -> str:
    """The CPU's units that set its arithmetic rate and precision ("AVX-512, avx512_bf16",
    "AMX", "AVX2"): one model name ("AMD EPYC") covers CPUs of each kind."""
    return this_cpu_precision().units


def machine_name(device: torch.device) -> str:
    """What a figure ran on: the GPU's name, or the CPU's model, units and usable cores
    ("AMD EPYC, AVX-512, avx512_bf16, 2 cores")."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {cpu_vector_units()}, {usable_cpus()} cores"


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """What `amp` trains in: bf16 on CUDA, on a CPU what CPU_PRECISION says for it;
    None (no autocast, fp32) where `enabled` is False or on other devices."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu":
        return this_cpu_precision().dtype
    return None


def precision(device: torch.device, enabled: bool) -> str:
    """The precision a run with `amp=enabled` trains in on `device`: "bf16" or "fp32"."""
    return "bf16" if amp_dtype(device, enabled) == torch.bfloat16 else "fp32"


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
