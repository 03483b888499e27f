"""The peer `cnn_fast` is measured against: the public "99 % on MNIST in under a second" recipe,
written from its description (two convs 24/32, fc 800-256-10, Adam β 0.7/0.9, OneCycle 1e-2,
batch 256, one epoch, no augmentation, no validation), on the data held in memory as normalised
float tensors before the clock starts. It trains on the same 55 000-image train split as every
mnist-lab run and is tested on the same test split.

As published it keeps PyTorch's default NCHW layout; `channels_last=True` stores it NHWC as
mnist-lab's models are (engine/device.py `place_model`), the layout oneDNN convolves fastest, so
the bench can say how much of a difference is layout and how much is the rest. `amp=True` adds
the bf16 autocast mnist-lab's runs get where the hardware multiplies in bf16 (engine/device.py
`amp_dtype`: CUDA, AMX CPUs), so that on such hardware the peer is not handicapped by fp32.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.data.mnist import Splits
from mnist_lab.engine.device import autocast, synchronize
from mnist_lab.models.common import MNIST_MEAN, MNIST_STD

SETTINGS = {"epochs": 1, "batch_size": 256, "lr": 1e-2, "betas": (0.7, 0.9)}


def peer_net() -> nn.Sequential:
    """[B, 1, 28, 28] normalised → logits [B, 10]; 28 → 26 → 13 → 11 → 5 px, 32·5·5 = 800."""
    return nn.Sequential(
        nn.Conv2d(1, 24, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(24, 32, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(800, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


@dataclass
class PeerResult:
    train_time_s: float  # the training loop alone: the data was in memory before
    test_accuracy: float


def train_peer(
    splits: Splits, seed: int = 0, channels_last: bool = False, amp: bool = False
) -> PeerResult:
    """Train the recipe on `splits` (on their device) and test it; `amp` as mnist-lab's `amp`."""
    torch.manual_seed(seed)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = (splits.train_x.unsqueeze(1).float() / 255 - MNIST_MEAN) / MNIST_STD  # [N, 1, 28, 28]
    x = x.contiguous(memory_format=layout)
    y = splits.train_y
    model = peer_net().to(memory_format=layout)
    steps = SETTINGS["epochs"] * -(-len(y) // SETTINGS["batch_size"])
    optimizer = torch.optim.Adam(model.parameters(), lr=SETTINGS["lr"], betas=SETTINGS["betas"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, SETTINGS["lr"], total_steps=steps)
    start = time.perf_counter()
    for _ in range(SETTINGS["epochs"]):
        for batch in torch.randperm(len(y)).split(SETTINGS["batch_size"]):
            with autocast(x.device, amp):
                loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    synchronize(x.device)
    seconds = time.perf_counter() - start
    with torch.inference_mode(), autocast(x.device, amp):
        test_x = (splits.test_x.unsqueeze(1).float() / 255 - MNIST_MEAN) / MNIST_STD
        test_x = test_x.contiguous(memory_format=layout)
        predictions = torch.cat([model.eval()(b).argmax(1) for b in test_x.split(1000)])
    return PeerResult(seconds, float((predictions == splits.test_y).float().mean()))
