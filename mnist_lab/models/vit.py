"""A small Vision Transformer for 28×28 digits, and timm's as a cross-check.

`vit` is written here: patch embedding (conv, stride = patch), CLS token, learned position
embeddings, pre-norm blocks (attention via F.scaled_dot_product_attention, GELU MLP), final
LayerNorm, linear head on the CLS token. `timm_vit` builds timm's VisionTransformer with the same
options, so the two can be compared run for run.
"""

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.errors import ConfigError
from mnist_lab.models.common import InputNorm, MnistNormalize
from mnist_lab.names import IMAGE_SIZE, NUM_CLASSES


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """`F.scaled_dot_product_attention` on [B, heads, N, D / heads]; in fp32 under CPU autocast.

    PyTorch's CPU flash-attention backward in bf16 took 22 ms a call against ~1 ms in fp32
    (torch 2.14, this ViT at batch 128): a 3.5× slower training step. CUDA's bf16 is fast.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), dropout_p=dropout_p
            )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)


class Attention(nn.Module):
    """Multi-head self-attention: [B, N, D] → [B, N, D]."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        # [B, N, 3D] → 3 × [B, heads, N, D / heads]
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        x = attention(q, k, v, dropout_p=drop)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D)))


class MLP(nn.Module):
    """[B, N, D] → [B, N, D] through a GELU hidden layer of mlp_ratio × D."""

    def __init__(self, dim: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a random `p` of the samples
    (the kept ones scaled by 1 / (1 - p)); the identity at p = 0 and in eval mode. No weights."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: [B, N, D] → [B, N, D]."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """[B, 1, 28, 28] in [0, 1] → logits [B, 10]."""

    def __init__(
        self,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        input_norm: str,
        drop_path: float,
    ) -> None:
        super().__init__()
        num_patches = (IMAGE_SIZE // patch_size) ** 2
        self.input_norm = InputNorm(input_norm)
        self.normalize = MnistNormalize()
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.pos_drop = nn.Dropout(dropout)
        # Stochastic depth rising linearly to `drop_path` in the last block, as timm's ViT.
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, dropout, p) for p in rates))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)
        self.apply(self._init)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # timm's ViT init: small truncated-normal linears, zero biases.
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(self.input_norm(x)))  # [B, D, 28 / p, 28 / p]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], N = (28 / p)²
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # [B, N + 1, D]
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])  # [B, 10] from the CLS token


def check_vit(
    name: str,
    *,
    dim: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    dropout: float,
    drop_path: float,
    **_: object,
) -> None:
    """`build_vit`'s and `build_timm_vit`'s rules beyond the options' choices (patch_size: one
    that divides 28), without building: a ConfigError naming the first option broken."""
    if dim < 1 or heads < 1 or dim % heads:
        raise ConfigError(
            f"{name}: dim ({dim}) must be a positive multiple of heads ({heads}); "
            f"e.g. dim={max(heads, 1) * max(dim // max(heads, 1), 1)}"
        )
    if depth < 1:
        raise ConfigError(f"{name}: depth must be ≥ 1 transformer block, got {depth}")
    if mlp_ratio <= 0:
        raise ConfigError(f"{name}: mlp_ratio must be > 0, got {mlp_ratio}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{name}: dropout must be in [0, 1), got {dropout}")
    check_drop_path(name, drop_path=drop_path)


def check_drop_path(name: str, *, drop_path: float) -> None:
    if not 0.0 <= drop_path < 1.0:
        raise ConfigError(f"{name}: drop_path must be in [0, 1), got {drop_path}")


def build_vit(
    *,
    patch_size: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    dropout: float,
    input_norm: str,
    drop_path: float,
) -> nn.Module:
    """The `vit` model (this project's ViT). `drop_path`: stochastic depth of the last block."""
    return ViT(patch_size, dim, depth, heads, mlp_ratio, dropout, input_norm, drop_path)


def build_timm_vit(
    *,
    patch_size: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
    dropout: float,
    input_norm: str,
    drop_path: float,
) -> nn.Module:
    """The `timm_vit` model: timm's VisionTransformer with `vit`'s options, MNIST-normalised."""
    from timm.models.vision_transformer import VisionTransformer

    net = VisionTransformer(
        img_size=IMAGE_SIZE,
        patch_size=patch_size,
        in_chans=1,
        num_classes=NUM_CLASSES,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        drop_rate=dropout,
        pos_drop_rate=dropout,
        proj_drop_rate=dropout,
        attn_drop_rate=dropout,
        drop_path_rate=drop_path,
    )
    # Index 0 holds no weights, so the state dict keys ("1.…") are the same with any input_norm.
    return nn.Sequential(nn.Sequential(InputNorm(input_norm), MnistNormalize()), net)
