"""How much arithmetic a training step is: FLOPs per image, counted once per run by PyTorch's
own `torch.utils.flop_counter` (matmuls, convolutions, attention; elementwise ops, norms and
the detector's NMS/RoIAlign count as 0, so the figure is the dense work, as MLPerf's MFU is).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnist_lab.engine.tasks import Batch, Task

# Images a count runs on: per-image FLOPs do not depend on the batch, and a full batch of a large
# convnet costs a training step's time. Two, so BatchNorm in train mode has a batch to normalise.
COUNTED_IMAGES = 2


def train_flops_per_sample(task: Task, model: nn.Module, batch: Batch) -> float:
    """FLOPs of one training step (forward and backward) per sample of `batch` (an image; a
    scene for the detector). Counted on a copy of the model, in train mode, with the RNG
    forked, so the real model's BatchNorm statistics, gradients and random stream are
    untouched. A classifier's batch is cut to COUNTED_IMAGES."""
    if isinstance(batch, tuple):
        batch = tuple(part[:COUNTED_IMAGES] for part in batch)
    probe = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    forked = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), FlopCounterMode(display=False) as counter:
        loss, _, count = task.train_step(task.step_module(probe), batch)
        loss.backward()
    return counter.get_total_flops() / count
