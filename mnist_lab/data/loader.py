"""Batches drawn by index from device-resident tensors, augmented on the device."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mnist_lab.errors import ConfigError
from mnist_lab.names import IMAGE_SIZE


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator for (seed, epoch); `stream` keeps order and augmentation independent."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@functools.cache
def _affine_basis(h: int, w: int, device: torch.device) -> torch.Tensor:
    """[6, h*w*2] such that theta.view(B, 6) @ basis == F.affine_grid(theta, [B, 1, h, w])."""
    eye = torch.eye(2, 3, device=device).unsqueeze(0)
    xy = F.affine_grid(eye, [1, 1, h, w], align_corners=False).view(h * w, 2)
    xy1 = torch.cat([xy, torch.ones(h * w, 1, device=device)], dim=1)
    return torch.einsum("pk,jl->jkpl", xy1, torch.eye(2, device=device)).reshape(6, h * w * 2)


def random_affine(x: torch.Tensor, shift: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Shift and rotate each image of x: [B, 1, H, W] float by shift: [B, 2] px (dx, dy) and
    angle_deg: [B], with one batched `grid_sample` (bilinear, zero fill). [0, 1] stays [0, 1]."""
    b, _, h, w = x.shape
    rad = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # theta maps output to input coordinates in [-1, 1]: a shift of +dx px samples from x - dx.
    theta = torch.stack([cos, -sin, -2 * shift[:, 0] / w, sin, cos, -2 * shift[:, 1] / h], dim=1)
    # Same grid as F.affine_grid(theta.view(B, 2, 3)), but one [B, 6] @ [6, H*W*2] matmul:
    # affine_grid's CPU bmm with k=3 costs ~2 ms per batch of 128, 5x the grid_sample itself.
    grid = (theta @ _affine_basis(h, w, x.device)).view(b, h, w, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.clamp_(0, 1)  # bilinear weights can overshoot 1 by an ulp


class BatchLoader:
    """Batches of (x float32 [B, 1, 28, 28] in [0, 1], y int64 [B]) cut from device tensors.

    images: uint8 [N, 28, 28] and labels: [N] on the device batches should be on. The order
    (when `shuffle`) and augmentation of epoch e depend only on (seed, e): call `set_epoch(e)`
    before each epoch, as with DistributedSampler, and a resumed run sees the same batches.
    `augment` applies a random shift (±`max_shift` px) and rotation (±`max_rotation_deg`).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool = False,
        drop_last: bool = False,
        max_shift: float = 2.0,
        max_rotation_deg: float = 10.0,
    ) -> None:
        if images.dtype != torch.uint8 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"images must be uint8 [N, 28, 28], got {images.dtype} {images.shape}")
        if labels.shape != images.shape[:1] or labels.device != images.device:
            raise ValueError("labels must be [N] on the same device as images")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_shift < 0 or max_rotation_deg < 0:
            raise ConfigError("max_shift and max_rotation_deg must be ≥ 0")
        self.images, self.labels = images, labels.long()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.augment, self.drop_last = augment, drop_last
        self.max_shift, self.max_rotation_deg = max_shift, max_rotation_deg
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s order and augmentation for the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs, device = len(self.labels), self.batch_size, self.images.device
        perm = None
        if self.shuffle:
            perm = torch.randperm(n, generator=_generator(self.seed, self.epoch, 0)).to(device)
        if self.augment:
            # One draw per epoch and sample, one host-to-device copy.
            g = _generator(self.seed, self.epoch, 1)
            shifts = ((torch.rand(n, 2, generator=g) * 2 - 1) * self.max_shift).to(device)
            angles = ((torch.rand(n, generator=g) * 2 - 1) * self.max_rotation_deg).to(device)
        for i in range(len(self)):
            sl = slice(i * bs, min((i + 1) * bs, n))
            idx = perm[sl] if perm is not None else sl
            x = self.images[idx].unsqueeze(1).float().div_(255)
            if self.augment:
                x = random_affine(x, shifts[sl], angles[sl])
            yield x, self.labels[idx]
