"""A small conv–pool–BN–ReLU network for 28×28 digits.

`depth` blocks, each conv3×3 → maxpool 2×2 → BatchNorm → ReLU, the first with `width` channels
and each next one with twice as many; then flatten, dropout and a linear head. Flattening the
last map (3×3 after three blocks) keeps where the strokes are; global average pooling
(`pool: avg`) lost one-epoch accuracy in our measurements at the same cost.

Pooling before BatchNorm and ReLU (as hlb-CIFAR10 does) runs both on a quarter of the pixels.
Max-pooling commutes with ReLU and with BN's affine map where its scale is positive, so the
block stays close to the usual one, and on a CPU the training step is faster at a tie in
one-epoch accuracy (`python -m mnist_lab.measure profile` times a step).

`convs` > 1 puts more conv-BN-ReLU layers in each block, before its pooling conv, at the
block's resolution (`cnn_best.yaml`: two a block).

`input_norm` is the per-image rescaling every classifier can take (models/common.py
`InputNorm`); "none" (the default) rescales nothing. `pool="avg"` averages the last map instead
of flattening it (a smaller head, so its checkpoints differ).
"""

import itertools

import torch
from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.models.common import InputNorm, MnistNormalize
from mnist_lab.names import IMAGE_SIZE, NUM_CLASSES


def conv_block(in_ch: int, out_ch: int, convs: int = 1) -> nn.Sequential:
    """[B, in_ch, H, W] → [B, out_ch, H // 2, W // 2]: `convs` - 1 conv-BN-ReLU layers at full
    resolution, then the conv-pool-BN-ReLU every block ends with."""
    layers: list[nn.Module] = []
    for _ in range(convs - 1):
        layers += [
            nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        ]
        in_ch = out_ch
    return nn.Sequential(
        *layers,
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),  # BN carries the bias
        nn.MaxPool2d(2),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class CNN(nn.Module):
    """[B, 1, 28, 28] in [0, 1] → logits [B, 10]."""

    def __init__(
        self, depth: int, width: int, dropout: float, input_norm: str, pool: str, convs: int
    ) -> None:
        super().__init__()
        chans = [1] + [width * 2**i for i in range(depth)]
        self.input_norm = InputNorm(input_norm)
        self.normalize = MnistNormalize()
        # 28 → 14 → 7 → 3 → 1 spatially; four pools is as deep as 28 px allows.
        self.features = nn.Sequential(
            *(conv_block(a, b, convs) for a, b in itertools.pairwise(chans))
        )
        side = IMAGE_SIZE // 2**depth if pool == "flatten" else 1  # floor at every pool
        self.pool = pool
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(chans[-1] * side * side, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(self.input_norm(x)))  # [B, C, S, S], S = 28 // 2**depth
        if self.pool == "avg":
            x = x.mean((2, 3))  # [B, C]
        return self.head(self.dropout(x.flatten(1)))  # [B, 10]


def build_cnn(
    *, depth: int, width: int, dropout: float, input_norm: str, pool: str, convs: int
) -> nn.Module:
    """The `cnn` model: `depth` conv blocks of `convs` convolutions each, `width` channels in
    the first one; `input_norm` and `pool` as in the module docstring."""
    return CNN(
        depth=depth, width=width, dropout=dropout, input_norm=input_norm, pool=pool, convs=convs
    )


def check_cnn(
    name: str, *, depth: int, width: int, convs: int, dropout: float, **_: object
) -> None:
    """`build_cnn`'s rules beyond the options' choices, without building: a ConfigError naming
    the first option broken."""
    if not 1 <= depth <= 4:
        raise ConfigError(
            f"{name}: depth must be 1..4 (28 px halves four times at most), got {depth}"
        )
    if not 1 <= convs <= 4:
        raise ConfigError(f"{name}: convs (convolutions per block) must be 1..4, got {convs}")
    if width < 1:
        raise ConfigError(f"{name}: width must be a positive channel count, got {width}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{name}: dropout must be in [0, 1), got {dropout}")
