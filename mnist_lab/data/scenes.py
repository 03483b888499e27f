"""Detection scenes made from MNIST digits on the fly, for Faster R-CNN.

Each digit is pasted on a blank square canvas at a random position and scale; its box is the
tight box of its ink on the canvas, computed from the rendered pixels. A scene holds 1 to
`max_digits` digits whose boxes do not overlap. Where digits go is drawn from a CPU generator
seeded by (seed, epoch), so the same seed gives the same scenes on any device; rendering is one
batched `grid_sample` on the digits' device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mnist_lab.data.sharding import rank_slice, sharded_batches
from mnist_lab.names import IMAGE_SIZE

INK_THRESHOLD = 0.1  # a pixel (in [0, 1]) is ink above this: MNIST's faint anti-aliasing is not
PLACEMENT_TRIES = 20  # redraws of a digit that overlaps its scene; then it sits this epoch out
GAP = 1.0  # px kept free between two boxes of a scene


def ink_boxes(images: torch.Tensor) -> torch.Tensor:
    """Tight boxes of the ink of images [N, H, W] (uint8, or float in [0, 1]).

    Returns float [N, 4] (x1, y1, x2, y2) in pixel-edge coordinates: a box covers columns
    x1 .. x2 - 1 and rows y1 .. y2 - 1, as torchvision's detection boxes expect. An image
    without ink gets (0, 0, 0, 0).
    """
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    ink = images.float() > INK_THRESHOLD * scale

    def span(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = mask.shape[1]
        idx = torch.arange(size, device=mask.device)
        first = torch.where(mask, idx, size).amin(1)
        last = torch.where(mask, idx, -1).amax(1) + 1
        return first, last

    x1, x2 = span(ink.any(1))
    y1, y2 = span(ink.any(2))
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    return torch.where(ink.flatten(1).any(1, keepdim=True), boxes, 0.0)


def paste(
    digits: torch.Tensor, scale: torch.Tensor, origin: torch.Tensor, canvas: int
) -> torch.Tensor:
    """Paste digits [B, 1, 28, 28] in [0, 1] on blank canvases [B, 1, canvas, canvas].

    Digit b becomes a tile of 28·scale[b] px whose top-left corner is origin[b] = (x, y) px.
    One bilinear `grid_sample`, zero fill.
    """
    b = digits.shape[0]
    # Canvas coordinate u in [-1, 1] maps to digit coordinate v = a·u + t (align_corners=False):
    # pixel-edge x_canvas = (u + 1)·C/2 and x_digit = (x_canvas - x0) / scale.
    a = canvas / (IMAGE_SIZE * scale)
    t = (canvas / 2 - origin) / (IMAGE_SIZE / 2 * scale.unsqueeze(1)) - 1  # [B, 2]
    zero = torch.zeros_like(a)
    theta = torch.stack([a, zero, t[:, 0], zero, a, t[:, 1]], dim=1).view(b, 2, 3)
    grid = F.affine_grid(theta, [b, 1, canvas, canvas], align_corners=False)
    return F.grid_sample(digits, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class Layout:
    """Where digits go in S scenes of up to K digits.

    index: int64 [S, K] ids into the split's digits (-1: empty slot); scale: float [S, K];
    origin: float [S, K, 2] top-left (x, y) of each 28·scale px tile on the canvas.
    """

    index: torch.Tensor
    scale: torch.Tensor
    origin: torch.Tensor


def plan(
    ink: torch.Tensor,
    counts: torch.Tensor,
    order: torch.Tensor,
    *,
    canvas: int,
    min_scale: float,
    max_scale: float,
    generator: torch.Generator,
) -> Layout:
    """Lay out digits `order` [N] in scenes of `counts` [S] digits (sum N) without overlap.

    ink: float [N_split, 4] ink boxes of the split's 28-px digits (`ink_boxes`), on the CPU.
    Slot by slot, a digit whose predicted canvas box overlaps an earlier digit of its scene is
    redrawn (position and scale) up to PLACEMENT_TRIES times, then left out (index -1).
    """
    s, k = len(counts), int(counts.max())
    scene = torch.repeat_interleave(torch.arange(s), counts)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(order)) - starts[scene]
    index = torch.full((s, k), -1, dtype=torch.long)
    index[scene, slot] = order
    scale = torch.empty(s, k)
    origin = torch.empty(s, k, 2)

    def draw(rows: torch.Tensor, j: int) -> None:
        n = len(rows)
        sc = min_scale + (max_scale - min_scale) * torch.rand(n, generator=generator)
        room = canvas - IMAGE_SIZE * sc
        scale[rows, j] = sc
        origin[rows, j] = torch.rand(n, 2, generator=generator) * room.unsqueeze(1)

    def boxes(j: int) -> torch.Tensor:  # predicted canvas boxes of slot j: [S, 4]
        sc = scale[:, j, None]
        xy = origin[:, j].repeat(1, 2)
        return xy + sc * ink[index[:, j].clamp(min=0)]

    for j in range(k):
        draw(torch.arange(s), j)
        for attempt in range(PLACEMENT_TRIES + 1):
            box = boxes(j)
            clash = torch.zeros(s, dtype=torch.bool)
            for i in range(j):
                other = boxes(i)
                apart = (
                    (box[:, 2] + GAP <= other[:, 0])
                    | (other[:, 2] + GAP <= box[:, 0])
                    | (box[:, 3] + GAP <= other[:, 1])
                    | (other[:, 3] + GAP <= box[:, 1])
                )
                clash |= ~apart & (index[:, i] >= 0)
            clash &= index[:, j] >= 0
            rows = clash.nonzero().flatten()
            if len(rows) == 0:
                break
            if attempt == PLACEMENT_TRIES:
                index[rows, j] = -1
            else:
                draw(rows, j)
    return Layout(index, scale, origin)


@dataclass
class Scenes:
    """A batch of S scenes with up to K digits each.

    images: float [S, 1, C, C] in [0, 1]; boxes: float [S, K, 4] (x1, y1, x2, y2) px;
    labels: int64 [S, K], digit + 1 (0 is torchvision's background; here an empty slot).
    """

    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """torchvision's detection targets: one {"boxes": [n, 4], "labels": [n]} per scene."""
        keep = self.labels > 0
        return [
            {"boxes": b[m], "labels": lab[m]}
            for b, lab, m in zip(self.boxes, self.labels, keep, strict=True)
        ]


def render(images: torch.Tensor, labels: torch.Tensor, layout: Layout, canvas: int) -> Scenes:
    """Draw `layout` (on the digits' device) with the split's images uint8 [N, 28, 28] and
    labels [N]. Boxes come from each digit's own rendered layer, so they are tight to its ink."""
    s, k = layout.index.shape
    present = layout.index >= 0
    idx = layout.index.clamp(min=0).flatten()
    digits = images[idx].unsqueeze(1).float().div_(255)
    layers = paste(digits, layout.scale.flatten(), layout.origin.flatten(0, 1), canvas)
    layers = layers.view(s, k, canvas, canvas) * present[..., None, None]
    boxes = ink_boxes(layers.flatten(0, 1)).view(s, k, 4)
    present &= (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    digit_labels = torch.where(present, labels[idx].view(s, k) + 1, 0)
    # Boxes do not overlap, so the max of the layers is the scene (and stays in [0, 1]).
    scene = layers.amax(1, keepdim=True).clamp_(0, 1)
    return Scenes(scene, boxes * present[..., None], digit_labels)


def _generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


class SceneLoader:
    """Batches of `Scenes` made from one split's digits: every digit once per epoch.

    images: uint8 [N, 28, 28] and labels: [N] on the device the scenes should be on. Scenes hold
    1..max_digits digits (max_digits=1: one scene per digit, in the split's order when not
    shuffled). How many digits each scene holds is fixed by `seed`, so `len()` is the same every
    epoch; which digits, where and how big depend only on (seed, epoch): call `set_epoch(e)`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        canvas_size: int,
        min_scale: float,
        max_scale: float,
        max_digits: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.labels = images, labels.long()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.canvas, self.min_scale, self.max_scale = canvas_size, min_scale, max_scale
        self.ink = ink_boxes(images).cpu()
        n = len(labels)
        counts = torch.randint(1, max_digits + 1, (n,), generator=_generator(seed, 0, 3))
        total = torch.cumsum(counts, 0)
        scenes = int(torch.searchsorted(total, n)) + 1  # first scene reaching n digits
        counts = counts[:scenes]
        counts[-1] -= int(total[scenes - 1]) - n
        self.counts = counts
        self.rank, self.world_size = rank, world_size  # each rank renders its part of a batch
        self.scenes = slice(0, len(counts))  # the epoch's scenes this loader yields
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_part(self, rank: int, world_size: int) -> SceneLoader:
        """A loader over rank `rank`'s contiguous part of this evaluation split's scenes: the
        same scenes a one-process evaluation renders (the layout is drawn for the whole split,
        then cut), so a sharded evaluation sums to the whole split's."""
        if self.shuffle or self.world_size > 1:
            raise ValueError("rank_part is for evaluation loaders (unshuffled, unsharded)")
        part = copy.copy(self)
        part.scenes = rank_slice(self.scenes.start, self.scenes.stop, rank, world_size)
        return part

    def __len__(self) -> int:
        scenes = self.scenes.stop - self.scenes.start
        if self.world_size > 1:
            return sharded_batches(scenes, self.batch_size, self.world_size)
        return math.ceil(scenes / self.batch_size)

    def layout(self) -> Layout:
        """This epoch's layout of all scenes, on the CPU."""
        n = len(self.labels)
        order = torch.arange(n)
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, self.epoch, 0))
        return plan(
            self.ink,
            self.counts,
            order,
            canvas=self.canvas,
            min_scale=self.min_scale,
            max_scale=self.max_scale,
            generator=_generator(self.seed, self.epoch, 1),
        )

    def __iter__(self) -> Iterator[Scenes]:
        layout = self.layout()
        device = self.images.device
        first, end = self.scenes.start, self.scenes.stop
        for i in range(len(self)):
            sl = slice(first + i * self.batch_size, min(first + (i + 1) * self.batch_size, end))
            if self.world_size > 1:
                sl = rank_slice(sl.start, sl.stop, self.rank, self.world_size)
            part = Layout(
                layout.index[sl].to(device),
                layout.scale[sl].to(device),
                layout.origin[sl].to(device),
            )
            yield render(self.images, self.labels, part, self.canvas)
