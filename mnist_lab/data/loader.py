"""Batches drawn by index from device-resident tensors, augmented on the device.

Augmentation is a set of named ops (`AUGMENTATIONS`), each with one magnitude, all batched:
per-image parameters for a whole epoch are drawn up front from a CPU generator seeded by
(seed, epoch), and pixel-level noise comes from a device generator seeded the same way, so
epoch e of a run sees the same augmented batches whether or not it was resumed.

- `offcentre`: half the images moved d ~ U(0, m) px in a random direction, whole pixels with zero
  fill (ink pushed past the border is lost), then cleaned as every path cleans what it reads
  (`data.cleaning.clean`): the digit a served model gets from a crop that missed. Applied
  first, as the capture comes before the pen's and the scan's variations;
- geometry, one `grid_sample` for all of it: `shift` (±m px along x and y), `rotate` (±m deg),
  `scale` (zoom in [1 - m, 1 + m / 3]: mostly smaller digits), `shear` (x-shear factor ±m),
  `elastic` (a smooth random displacement field, up to ~m px, from a 4×4 grid of normal draws
  upsampled bilinearly);
- `stroke`: thinner or thicker pen, x blended towards its 3×3 erosion or dilation by t ~ U(-m, m);
- `lowres`: half the images as a small scan enlarged: reduced by a factor f ~ U(1, m) (area
  average; f 2.5 makes MNIST's 20-px digit 8 px tall), enlarged by nearest neighbour into
  blocks and reduced back to 28 px by area average, as `predict` reads a phone's zoom of a
  low-resolution scan;
- `blur`: half the images convolved with a random anisotropic Gaussian (major sigma U(0.3, m) px,
  minor sigma U(0.3, 1) px, random angle), which covers defocus and short motion blur;
- `noise`: half the images get salt-and-pepper noise on a U(0, m) share of the pixels, then
  Gaussian noise of std U(0, m / 2).

`augment` is a bool (True: `shift:2,rotate:10`), a preset name (`AUGMENT_PRESETS`) or
"op[:magnitude],..." with magnitudes defaulting to `DEFAULT_MAGNITUDES`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from mnist_lab.data import cleaning
from mnist_lab.data.sharding import rank_slice, sharded_batches
from mnist_lab.errors import ConfigError
from mnist_lab.names import IMAGE_SIZE

# Op name → default magnitude, in the order they are applied; (low, high] bounds the magnitude.
DEFAULT_MAGNITUDES: dict[str, float] = {
    "offcentre": 8.0,
    "shift": 3.0,
    "rotate": 20.0,
    "scale": 0.3,
    "shear": 0.3,
    "elastic": 1.5,
    "stroke": 0.7,
    "lowres": 3.0,
    "blur": 2.0,
    "noise": 0.2,
}
AUGMENTATIONS: tuple[str, ...] = tuple(DEFAULT_MAGNITUDES)
MAGNITUDE_BOUNDS: dict[str, tuple[float, float]] = {
    "offcentre": (0.0, 14.0),
    "shift": (0.0, 14.0),
    "rotate": (0.0, 180.0),
    "scale": (0.0, 0.9),
    "shear": (0.0, 1.0),
    "elastic": (0.0, 5.0),
    "stroke": (0.0, 1.0),
    "lowres": (1.0, 5.0),
    "blur": (0.3, 4.0),
    "noise": (0.0, 0.5),
}
AUGMENT_PRESETS: dict[str, str] = {
    "affine": "shift:2,rotate:10",  # what augment=true has always meant
    # every op there was when it was named; a preset keeps its meaning, so runs logged with it
    # stay one configuration
    "robust": "shift,rotate,scale,shear,elastic,stroke,blur,noise",
}
PHOTOMETRIC_SHARE = 0.5  # share of the images that `offcentre`, `lowres`, `blur`, `noise` touch
BLUR_RADIUS = 4  # taps each side of the blur kernel: 9×9


TRUE_SPELLINGS = ("true", "yes", "1")
FALSE_SPELLINGS = ("", "none", "false", "no", "0", "off")


def parse_augment(value: bool | str) -> dict[str, float]:
    """Op name → magnitude for an `augment` setting ({} when off), in application order.

    value: False/True, "none"/"true"/"false", a preset name or "op[:magnitude],...".
    Raises ConfigError naming `augment` and the valid values for anything else.
    """
    if isinstance(value, bool):
        value = "affine" if value else ""
    text = str(value).strip().lower()
    if text in FALSE_SPELLINGS:
        return {}
    text = AUGMENT_PRESETS.get("affine" if text in TRUE_SPELLINGS else text, text)
    ops: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.replace("+", ",").split(","))):
        name, _, magnitude = item.partition(":")
        name = name.strip()
        if name not in DEFAULT_MAGNITUDES:
            raise ConfigError(_augment_help(f"unknown augmentation {name!r}", value))
        ops[name] = _magnitude(name, magnitude, value)
    return {name: ops[name] for name in AUGMENTATIONS if name in ops}


def augment_spec(value: bool | str) -> bool | str:
    """An `augment` setting, checked and in the form a run logs: False/True for the boolean
    spellings, any other string as given. Not expanded, so a run logs what
    `mlflow run -P augment=...` logged before our code started (MLflow forbids changing a
    param); `parse_augment` expands it where the batches are made."""
    parse_augment(value)  # a ConfigError naming `augment` for a bad value
    if isinstance(value, bool):
        return value
    text = str(value).strip()
    if text.lower() in TRUE_SPELLINGS:
        return True
    if text.lower() in FALSE_SPELLINGS:
        return False
    return text


def _magnitude(name: str, text: str, value: object) -> float:
    if not text.strip():
        return DEFAULT_MAGNITUDES[name]
    low, high = MAGNITUDE_BOUNDS[name]
    try:
        magnitude = float(text)
    except ValueError:
        magnitude = math.nan
    if not low <= magnitude <= high:
        raise ConfigError(
            _augment_help(
                f"{name} magnitude {text.strip()!r} must be in [{low:g}, {high:g}]", value
            )
        )
    return magnitude


def _augment_help(problem: str, value: object) -> str:
    return (
        f"augment={value!r}: {problem}; valid values: true, false, a preset "
        f"({', '.join(AUGMENT_PRESETS)}) or a comma-separated list of op[:magnitude] with ops "
        f"{', '.join(f'{k} (default {v:g})' for k, v in DEFAULT_MAGNITUDES.items())}"
    )


def _generator(seed: int, epoch: int, stream: int, device: str = "cpu") -> torch.Generator:
    """A generator for (seed, epoch); `stream` keeps order and augmentation independent."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state))


@functools.cache
def _affine_basis(h: int, w: int, device: torch.device) -> torch.Tensor:
    """[6, h*w*2] such that theta.view(B, 6) @ basis == F.affine_grid(theta, [B, 1, h, w])."""
    eye = torch.eye(2, 3, device=device).unsqueeze(0)
    xy = F.affine_grid(eye, [1, 1, h, w], align_corners=False).view(h * w, 2)
    xy1 = torch.cat([xy, torch.ones(h * w, 1, device=device)], dim=1)
    return torch.einsum("pk,jl->jkpl", xy1, torch.eye(2, device=device)).reshape(6, h * w * 2)


def affine_theta(
    shift: torch.Tensor,
    angle_deg: torch.Tensor,
    scale: torch.Tensor | None = None,
    shear: torch.Tensor | None = None,
    size: int = IMAGE_SIZE,
) -> torch.Tensor:
    """[B, 6] output→input maps in [-1, 1] coordinates (F.affine_grid's theta, flattened).

    shift: [B, 2] px (dx, dy); angle_deg: [B]; scale: [B] zoom (<1 shrinks the digit); shear:
    [B] x-shear factor. The map is R(angle) @ Shear @ (1 / scale), then the shift.
    """
    rad = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    k = shear if shear is not None else torch.zeros_like(cos)
    inv = 1 / scale if scale is not None else torch.ones_like(cos)
    # A shift of +dx px samples from x - dx.
    t = -2 * shift / size
    a = torch.stack([cos * inv, (cos * k - sin) * inv, sin * inv, (sin * k + cos) * inv], dim=1)
    return torch.stack([a[:, 0], a[:, 1], t[:, 0], a[:, 2], a[:, 3], t[:, 1]], dim=1)


def warp(
    x: torch.Tensor, theta: torch.Tensor, displacement: torch.Tensor | None = None
) -> torch.Tensor:
    """x: [B, 1, H, W] sampled at theta: [B, 6] (see `affine_theta`) plus displacement:
    [B, H, W, 2] in [-1, 1] units, by one bilinear, zero-fill `grid_sample`. [0, 1] stays."""
    b, _, h, w = x.shape
    # Same grid as F.affine_grid(theta.view(B, 2, 3)), but one [B, 6] @ [6, H*W*2] matmul:
    # affine_grid's CPU bmm with k=3 costs ~2 ms per batch of 128, 5x the grid_sample itself.
    grid = (theta @ _affine_basis(h, w, x.device)).view(b, h, w, 2)
    if displacement is not None:
        grid = grid + displacement
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return x.clamp_(0, 1)  # bilinear weights can overshoot 1 by an ulp


def random_affine(x: torch.Tensor, shift: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Shift and rotate each image of x: [B, 1, H, W] float by shift: [B, 2] px (dx, dy) and
    angle_deg: [B], with one batched `grid_sample` (bilinear, zero fill). [0, 1] stays [0, 1]."""
    return warp(x, affine_theta(shift, angle_deg, size=x.shape[-1]))


@functools.cache
def _upsample_matrix(coarse: int, size: int, device: torch.device) -> torch.Tensor:
    """[coarse², size²]: v.view(B, coarse²) @ it == bilinear F.interpolate of v to size×size."""
    eye = torch.eye(coarse * coarse, device=device).view(-1, 1, coarse, coarse)
    up = F.interpolate(eye, size=(size, size), mode="bilinear", align_corners=False)
    return up.view(coarse * coarse, size * size)


def elastic_field(noise: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """[B, 2, g, g] px displacements at a coarse grid → [B, size, size, 2] in grid units,
    upsampled bilinearly by one matmul (4× cheaper than F.interpolate on a CPU)."""
    b, _, g, _ = noise.shape
    field = noise.reshape(b * 2, g * g) @ _upsample_matrix(g, size, noise.device)
    return field.view(b, 2, size, size).permute(0, 2, 3, 1) * (2 / size)


def off_centre(x: torch.Tensor, distance: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """What a model reads of digits captured off-centre: x [B, 1, H, W] moved `distance` px
    (float [B], rounded per axis to whole pixels) in direction `angle` (radians [B], 0: right,
    pi/2: down), zero fill, then `clean`ed as every path that reads digits cleans them."""
    return cleaning.clean(cleaning.move(x, distance, angle))


def stroke_width(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x: [B, 1, H, W] blended towards its 3×3 dilation (t: [B] > 0) or erosion (t < 0)."""
    t = t.view(-1, 1, 1, 1)
    sign = torch.where(t < 0, -1.0, 1.0)  # erode(x) = -dilate(-x): one max-pool for both
    target = sign * _max3x3(sign * x)
    return x + t.abs() * (target - x)


def low_resolution(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """x [B, 1, H, H] as scanned at H / factor px ([B] >= 1, rounded to whole pixels), enlarged
    by nearest neighbour to 4H and reduced to H by area average: blocks with soft edges, as a
    photo's reduction leaves a small scan's enlargement. Images of one scan size go together."""
    h = x.shape[-1]
    sizes = torch.clamp(torch.round(h / factor), 1, h).long()
    out = x.clone()
    for size in sizes.unique().tolist():
        if size == h:
            continue
        chosen = sizes == size
        small = F.interpolate(x[chosen], size=(size, size), mode="area")
        blocks = F.interpolate(small, size=(4 * h, 4 * h), mode="nearest")
        out[chosen] = F.avg_pool2d(blocks, 4)
    return out


def _max3x3(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] → its 3×3 running maximum (edges ignored), as two 1-D passes of shifted
    maxima: ~10× faster on a CPU than F.max_pool2d with stride 1."""
    p = F.pad(x, (1, 1), value=-math.inf)
    x = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    p = F.pad(x, (0, 0, 1, 1), value=-math.inf)
    return torch.maximum(torch.maximum(p[..., :-2, :], p[..., 1:-1, :]), p[..., 2:, :])


def gaussian_kernels(sigma: torch.Tensor, angle: torch.Tensor, radius: int) -> torch.Tensor:
    """[B, 1, 2r+1, 2r+1] unit-sum Gaussians; sigma: [B, 2] (along, across) px; angle: [B] rad."""
    taps = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    yy, xx = torch.meshgrid(taps, taps, indexing="ij")
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    along, across = xx * cos + yy * sin, -xx * sin + yy * cos
    s = sigma.view(-1, 2, 1, 1)
    kernel = torch.exp(-0.5 * ((along / s[:, 0]) ** 2 + (across / s[:, 1]) ** 2))
    return (kernel / kernel.sum((1, 2), keepdim=True)).unsqueeze(1)


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """x: [B, 1, H, W] each convolved with its own kernels[b]: [B, 1, k, k] (zero padding)."""
    b, _, h, w = x.shape
    out = F.conv2d(x.view(1, b, h, w), kernels, padding=kernels.shape[-1] // 2, groups=b)
    return out.view(b, 1, h, w)


def salt_pepper_gauss(
    x: torch.Tensor, amount: torch.Tensor, std: torch.Tensor, g: torch.Generator
) -> torch.Tensor:
    """x: [B, 1, H, W] with a share amount: [B] of pixels set to 0 or 1 (half each), then
    Gaussian noise of std: [B]; clamped to [0, 1]. Pixel draws come from g (x's device)."""
    shape, device = x.shape, x.device
    u = torch.rand(shape, generator=g, device=device)
    hit = u < amount.view(-1, 1, 1, 1)
    salt = u < amount.view(-1, 1, 1, 1) / 2
    x = torch.where(hit, salt.to(x.dtype), x)
    x = x + std.view(-1, 1, 1, 1) * torch.randn(shape, generator=g, device=device)
    return x.clamp_(0, 1)


class BatchLoader:
    """Batches of (x float32 [B, 1, 28, 28] in [0, 1], y int64 [B]) cut from device tensors.

    images: uint8 [N, 28, 28] and labels: [N] on the device batches should be on. The order
    (when `shuffle`) and augmentation of epoch e depend only on (seed, e): call `set_epoch(e)`
    before each epoch, as with DistributedSampler, and a resumed run sees the same batches.
    `augment`: see `parse_augment`; True applies a random shift (±`max_shift` px) and
    rotation (±`max_rotation_deg`), as it always has. `augment_epochs`: augment epochs 1 to
    this one only (None: every epoch); later epochs are clean.

    In a distributed job (`world_size` > 1) every rank iterates the same global batches of the
    same shuffled order and yields its own part of each (data/sharding.py); an image's
    augmentation is the one a one-process run gives it, pixel noise aside (each rank draws its
    own, seeded by its rank).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool | str = False,
        augment_epochs: int | None = None,
        drop_last: bool = False,
        max_shift: float = 2.0,
        max_rotation_deg: float = 10.0,
        rank: int = 0,
        world_size: int = 1,
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
        self.ops = parse_augment(augment)
        if augment is True:
            self.ops = {"shift": max_shift, "rotate": max_rotation_deg}
        self.augment, self.drop_last = bool(self.ops), drop_last
        self.augment_epochs = augment_epochs
        self.max_shift, self.max_rotation_deg = max_shift, max_rotation_deg
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s order and augmentation for the next iteration."""
        self.epoch = epoch

    def rank_part(self, rank: int, world_size: int) -> BatchLoader:
        """A loader over rank `rank`'s contiguous part of this evaluation split (unshuffled, not
        augmented), in batches of the same size: the ranks' parts cover the split once, sizes
        differing by at most one image, so a sharded evaluation sums to the whole split's."""
        if self.shuffle or self.augment:
            raise ValueError("rank_part is for evaluation loaders (no shuffle, no augmentation)")
        part = rank_slice(0, len(self.labels), rank, world_size)
        return BatchLoader(self.images[part], self.labels[part], self.batch_size)

    def __len__(self) -> int:
        n = len(self.labels)
        if self.world_size > 1:
            return sharded_batches(n, self.batch_size, self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, bs, device = len(self.labels), self.batch_size, self.images.device
        perm = None
        if self.shuffle:
            perm = torch.randperm(n, generator=_generator(self.seed, self.epoch, 0)).to(device)
        augment = self.augment and (
            self.augment_epochs is None or self.epoch <= self.augment_epochs
        )
        if augment:
            params = self._draw(n)
            pixels = _generator(self.seed, self.epoch, 2 + 16 * self.rank, device.type)
            pixels = pixels if device.type != "cuda" else _cuda_generator(pixels, device)
        for i in range(len(self)):
            sl = slice(i * bs, min((i + 1) * bs, n))
            if self.world_size > 1:
                sl = rank_slice(sl.start, sl.stop, self.rank, self.world_size)
            idx = perm[sl] if perm is not None else sl
            x = self.images[idx].unsqueeze(1).float().div_(255)
            if augment:
                x = self._apply(x, {k: v[sl] for k, v in params.items()}, pixels)
            yield x, self.labels[idx]

    def _draw(self, n: int) -> dict[str, torch.Tensor]:
        """Per-image parameters of every op for one epoch: one CPU draw, one copy each.

        The draw order is fixed (every op draws, used or not), so turning one op on or off
        leaves the others' parameters unchanged.
        """
        g, m = _generator(self.seed, self.epoch, 1), self.ops

        def uniform(*shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, *shape, generator=g)

        # Shifts, then angles, first: their draws do not depend on the ops after them.
        shift, angle = uniform(2), uniform()
        scale, shear = uniform(low=0.0), uniform()
        elastic = torch.randn(n, 2, 4, 4, generator=g)
        stroke = uniform()
        blur_on, blur_sigma = uniform(low=0.0), uniform(2, low=0.0)
        blur_angle = uniform(low=0.0, high=math.pi)
        noise_on, noise = uniform(low=0.0), uniform(2, low=0.0)
        offcentre_on, offcentre = uniform(low=0.0), uniform(2, low=0.0)
        lowres_on, lowres = uniform(low=0.0), uniform(low=0.0)
        s = m.get("scale", 0.0)
        params = {
            "shift": shift * m.get("shift", 0.0),
            "angle": angle * m.get("rotate", 0.0),
            "scale": 1 - s + scale * (4 / 3) * s,  # U(1 - s, 1 + s / 3)
            "shear": shear * m.get("shear", 0.0),
            "elastic": elastic * m.get("elastic", 0.0) / 2,  # ~95 % of |d| under m px
            "stroke": stroke * m.get("stroke", 0.0),
            "blur_sigma": 0.3 + blur_sigma * (torch.tensor([m.get("blur", 0.3), 1.0]) - 0.3),
            "blur_angle": blur_angle,
            "blur_on": blur_on < PHOTOMETRIC_SHARE,
            "noise_amount": noise[:, 0] * m.get("noise", 0.0),
            "noise_std": noise[:, 1] * m.get("noise", 0.0) / 2,
            "noise_on": noise_on < PHOTOMETRIC_SHARE,
            "offcentre_distance": offcentre[:, 0] * m.get("offcentre", 0.0),
            "offcentre_angle": offcentre[:, 1] * 2 * math.pi,
            "offcentre_on": offcentre_on < PHOTOMETRIC_SHARE,
            "lowres_factor": 1 + lowres * (m.get("lowres", 1.0) - 1),
            "lowres_on": lowres_on < PHOTOMETRIC_SHARE,
        }
        return {k: v.to(self.images.device) for k, v in params.items()}

    def _apply(
        self, x: torch.Tensor, p: dict[str, torch.Tensor], pixels: torch.Generator
    ) -> torch.Tensor:
        """x: [B, 1, 28, 28] in [0, 1] with this loader's ops; p: `_draw`'s rows for x."""
        ops = self.ops
        if "offcentre" in ops:
            on = p["offcentre_on"].to(p["offcentre_distance"].dtype)
            x = off_centre(x, p["offcentre_distance"] * on, p["offcentre_angle"])
        if ops.keys() & {"shift", "rotate", "scale", "shear", "elastic"}:
            theta = affine_theta(p["shift"], p["angle"], p["scale"], p["shear"], x.shape[-1])
            field = elastic_field(p["elastic"], x.shape[-1]) if "elastic" in ops else None
            x = warp(x, theta, field)
        if "stroke" in ops:
            x = stroke_width(x, p["stroke"])
        if "lowres" in ops:
            x = low_resolution(x, torch.where(p["lowres_on"], p["lowres_factor"], 1.0))
        if "blur" in ops and bool(p["blur_on"].any()):
            on = p["blur_on"]
            kernels = gaussian_kernels(p["blur_sigma"][on], p["blur_angle"][on], BLUR_RADIUS)
            x = x.clone()
            x[on] = blur(x[on], kernels)
        if "noise" in ops:
            on = p["noise_on"].to(x.dtype)
            x = salt_pepper_gauss(x, p["noise_amount"] * on, p["noise_std"] * on, pixels)
        return x


def _cuda_generator(g: torch.Generator, device: torch.device) -> torch.Generator:
    """g's seed on `device` (CUDA generators are per device index)."""
    return torch.Generator(device=device).manual_seed(g.initial_seed())
