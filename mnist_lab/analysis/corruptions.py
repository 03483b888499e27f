"""MNIST-C corruptions (Mu & Gilmer 2019, arXiv:1906.02337), made on the fly in torch.

`corrupt(images, name, severity, seed)` applies one of the 15 MNIST-C corruptions to a batch of
test images ([B, 1, 28, 28] floats in [0, 1], white digit on black) on the images' own device,
with a private `torch.Generator`, so the result depends only on (images, name, severity, seed).

MNIST-C uses one fixed parameter per corruption. Here each corruption has five levels: level
`DEFAULT_SEVERITY` (3) is MNIST-C's parameter, 1-2 are milder, 4-5 stronger, and all five keep
the digit readable to a person (`_LEVELS` holds the table; MNIST-C's own 5-level lists go further
than that for rotate, shear, glass and motion blur). Each corruption follows the reference code
(github.com/google-research/mnist-c, corruptions.py) as closely as a batched version allows.
"The same" below means the same definition; for given random draws the outputs were checked
equal to skimage's (within 1e-5) on real MNIST.

- shot_noise, impulse_noise, brightness, stripe: the same (brightness on a grey image is HSV
  value + c, i.e. ``clip(x + c)``; impulse is skimage's salt & pepper, half salt).
- rotate, scale, translate: the same. The reference warps with skimage (bilinear, zero fill)
  under an inverse map about the centre (13.5, 13.5); torchvision's `v2.functional` rotate and
  affine sample identically. They take one parameter set per call, so the random signs are
  applied as one call per sign pattern (2 or 4 calls); that measured faster than one
  per-image `F.affine_grid` + `F.grid_sample` call, as torchvision warps a shared grid with the
  images stacked as channels.
- shear: the same, by grid_sample: skimage's original `shear=s` (the one MNIST-C ran on) is the
  inverse map [[1, -sin s], [0, cos s]], a shear plus a 1 / cos s vertical stretch, which
  torchvision's affine (isotropic scale only) cannot express.
- glass_blur: the reference swaps pixels one at a time in a Python loop (slow). We
  move all pixels at once with a random local permutation per pass (a random half of the pixels
  jump ahead of up to max_delta others, along rows then columns: argsort of jittered positions),
  mass-preserving like the swaps. The mean pixel change matches the loop's at MNIST-C's
  glass parameters; the loop's chained in-place swaps carry some pixels several steps to the top
  left, ours spread symmetrically.
- motion_blur: ImageMagick's MotionBlurImage (via wand) rebuilt: a one-sided Gaussian streak of
  2 * ceil(radius) + 1 taps weighted exp(-i^2 / 2 sigma^2), at integer offsets along a random
  angle in [-45, 45] degrees, edge pixels repeated; one gather per tap for the whole batch
  (taps weighing under 1e-6 skipped).
- fog: the reference's diamond-square plasma fractal, same algorithm and 256x256 map size. It
  takes one 28x28 window of a fresh map per image; we build ceil(B / 64) maps and give each image
  its own of the 64 disjoint windows on a 32-pixel grid (window statistics measured the same),
  for 1/64 of the work.
- spatter, glass_blur: skimage's `gaussian` (4-sigma kernel, edge repeated) as two 28x28 matrix
  products per image, measured faster here than torchvision's `gaussian_blur` (a 1-channel
  conv2d), which also pads by reflection.
- canny_edges: skimage's `feature.canny` (sigma 1, thresholds 0.1 / 0.2) rebuilt in torch:
  masked Gaussian, Sobel, non-maximum suppression interpolating between the axis and diagonal
  neighbour, hysteresis as repeated 3x3 dilation within the weak edges (8-connected, as
  skimage's labelling). Edge maps equal to skimage's on real MNIST.
- dotted_line, zigzag: the same: the reference's line profile 1 + log(1 - d / 2.3), d the
  vertical distance to the line, for all images at once; zigzag vertices by its formulas.

MNIST-C has no levels for stripe, dotted_line, zigzag and canny_edges; their curves are ours:
stripe width; line intensity (1-2) then two lines (4-5); the share of the digit kept under the
edges (1-2) then a wider smoothing sigma (4-5). Spatter's levels vary only the liquid mean
(MNIST-C's own spatter list is not monotone in the area it covers).

Beyond MNIST-C (`LARGE_SHIFTS`, not in `CORRUPTIONS` nor in MNIST-C's mean): digits far from
where MNIST puts them, as a crop that missed or a box drawn around a form field leaves them.
MNIST-C's translate stops at 3 px per axis; users' digits do not.

- shift: the digit moved by whole pixels, `d` px in a uniformly random direction (d = 2, 4, 6,
  7, 8 at severities 1-5), zero fill: from 6 px on, wide digits lose a column or more to the
  border.
- border_cut: the digit pushed over a random side of the frame (left, right, top or bottom)
  until a share of its ink box is cut off (5, 10, 15, 20, 30 % at severities 1-5).
"""

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F

from mnist_lab.data.cleaning import move, shift
from mnist_lab.errors import ConfigError
from mnist_lab.names import DEFAULT_SEVERITY, IMAGE_SIZE

CORRUPTIONS: tuple[str, ...] = (
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
)
# Beyond MNIST-C: digits far off centre, or partly cut by the frame (see the module's notes).
LARGE_SHIFTS: tuple[str, ...] = ("shift", "border_cut")
SEVERITIES = (1, 2, 3, 4, 5)

# Parameters at severity 1..5; entry DEFAULT_SEVERITY - 1 is MNIST-C's (its level in brackets).
_LEVELS: dict[str, tuple] = {
    # photons per unit intensity (MNIST-C: 3, its 5)
    "shot_noise": (10.0, 5.0, 3.0, 2.0, 1.5),
    # fraction of pixels set to 0 or 1 (MNIST-C: 0.17, its 4)
    "impulse_noise": (0.06, 0.1, 0.17, 0.22, 0.27),
    # (sigma, max_delta, iterations) (MNIST-C: (0.7, 1, 2), its 1)
    "glass_blur": ((0.5, 1, 1), (0.6, 1, 2), (0.7, 1, 2), (0.8, 1, 2), (0.9, 2, 1)),
    # (radius, sigma) of the streak (MNIST-C: (10, 3), its 1)
    "motion_blur": ((6, 1.5), (8, 2.0), (10, 3.0), (12, 3.5), (14, 4.0)),
    # shear angle in radians, random sign (MNIST-C: 0.4, its 2)
    "shear": (0.2, 0.3, 0.4, 0.5, 0.6),
    # new size of the digit (MNIST-C: 0.7, its 3)
    "scale": (0.9, 0.8, 0.7, 0.6, 0.5),
    # rotation in radians, random sign (MNIST-C: 0.4, its 2)
    "rotate": (0.2, 0.3, 0.4, 0.5, 0.6),
    # added to every pixel (MNIST-C: 0.5, its 5)
    "brightness": (0.3, 0.4, 0.5, 0.6, 0.7),
    # shift in pixels along x and y, random signs (MNIST-C: 3, its 3)
    "translate": (1, 2, 3, 4, 5),
    # width of the inverted band at each side (MNIST-C: 7, its only level)
    "stripe": (3, 5, 7, 8, 9),
    # (fog strength, wibble decay) (MNIST-C: (3, 1.4), its 5)
    "fog": ((1.5, 2.0), (2.0, 1.7), (3.0, 1.4), (3.5, 1.4), (4.0, 1.4)),
    # (liquid mean, liquid std, liquid sigma, threshold, mask sigma) (MNIST-C: its 4)
    "spatter": (
        (0.61, 0.3, 1, 0.65, 1.5),
        (0.63, 0.3, 1, 0.65, 1.5),
        (0.65, 0.3, 1, 0.65, 1.5),
        (0.66, 0.3, 1, 0.65, 1.5),
        (0.67, 0.3, 1, 0.65, 1.5),
    ),
    # (lines, intensity) (MNIST-C: one line at full intensity, its only level)
    "dotted_line": ((1, 0.5), (1, 0.75), (1, 1.0), (2, 0.75), (2, 1.0)),
    # (zigzags, intensity) (MNIST-C: one at full intensity, its only level)
    "zigzag": ((1, 0.5), (1, 0.75), (1, 1.0), (2, 0.6), (2, 0.8)),
    # (smoothing sigma, share of the digit kept under the edges) (MNIST-C: (1, 0))
    "canny_edges": ((1.0, 0.5), (1.0, 0.25), (1.0, 0.0), (1.5, 0.0), (2.0, 0.0)),
    # Not MNIST-C's. Shift length in pixels, random direction.
    "shift": (2, 4, 6, 7, 8),
    # Not MNIST-C's. Share of the ink box pushed over a random side of the frame.
    "border_cut": (0.05, 0.1, 0.15, 0.2, 0.3),
}


Apply = Callable[[torch.Tensor, Any, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One corruption of the suite. `apply(images, params, generator)`: images float
    [B, 1, 28, 28] in [0, 1] on any device, `params` one entry of `levels`, random draws only
    from `generator` (on the images' device) → float [B, 1, 28, 28] (clamped to [0, 1] after).
    `levels`: its parameters at severities 1..5."""

    apply: Apply
    levels: tuple


# Every corruption a robustness report evaluates, by name, in report order: the built-in ones
# (filled at the end of this module), then those `register_corruption` adds.
SUITE: dict[str, Corruption] = {}


def register_corruption(name: str, apply: Apply, levels: Sequence) -> None:
    """Add a corruption to the suite: every classifier run's report and every `robustness` run
    then evaluate it at every severity and log `robust_accuracy_<name>` (MNIST-C's severity) and
    `robust_accuracy_<name>_severity_<k>`. Only MNIST-C's 15 (`CORRUPTIONS`) enter
    `robust_accuracy_mean`, so a new one is reported beside the mean, not in it."""
    if not name.isidentifier() or name in SUITE or name in ("mean", "clean"):
        raise ConfigError(
            f"corruption name {name!r}: give a new snake_case name (metric names are "
            f"robust_accuracy_<name>); taken: {', '.join(SUITE)}"
        )
    if len(levels) != len(SEVERITIES):
        raise ConfigError(
            f"corruption {name!r}: give one parameter set per severity {SEVERITIES}, "
            f"got {len(levels)}"
        )
    SUITE[name] = Corruption(apply, tuple(levels))


def corruption_names() -> tuple[str, ...]:
    """Every corruption in the suite: MNIST-C's 15, the large shifts, then any registered."""
    return tuple(SUITE)


def check_corruptions(names: Iterable[str]) -> tuple[str, ...]:
    """The names as a tuple (duplicates dropped, order kept); ConfigError for an unknown one."""
    if isinstance(names, str):
        names = (names,)
    checked: list[str] = []
    for name in names:
        if name not in SUITE:
            raise ConfigError(f"unknown corruption {name!r}; valid corruptions: {', '.join(SUITE)}")
        if name not in checked:
            checked.append(name)
    return tuple(checked)


def check_severities(levels: Iterable[int]) -> tuple[int, ...]:
    """The levels as a tuple of ints (duplicates dropped); ConfigError for one outside 1..5."""
    if isinstance(levels, Integral):
        levels = (levels,)
    checked: list[int] = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, Integral) or level not in SEVERITIES:
            raise ConfigError(
                f"severities must be integers from {SEVERITIES[0]} to {SEVERITIES[-1]}, "
                f"got {level!r}"
            )
        if int(level) not in checked:
            checked.append(int(level))
    return tuple(checked)


def corrupt(
    images: torch.Tensor, name: str, severity: int = DEFAULT_SEVERITY, seed: int = 0
) -> torch.Tensor:
    """One corruption of a batch (MNIST-C's or a large shift), on the images' device.

    images: float [B, 1, 28, 28] in [0, 1], white digit on black.
    Returns float [B, 1, 28, 28] in [0, 1], same device and dtype; the same for the same
    (images, name, severity, seed), whatever the global RNG state.
    """
    (name,) = check_corruptions((name,))
    (severity,) = check_severities((severity,))
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"images must be [B, 1, 28, 28], got {list(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floats in [0, 1], got {images.dtype}")
    if images.shape[0] == 0:
        return images.clone()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    corruption = SUITE[name]
    out = corruption.apply(images.float(), corruption.levels[severity - 1], generator)
    return out.clamp(0.0, 1.0).to(images.dtype)


# ---------------------------------------------------------------------------------------------
# Helpers


def _uniform(shape: tuple[int, ...], g: torch.Generator, low: float = 0.0, high: float = 1.0):
    """Uniform floats in [low, high) of the given shape on the generator's device."""
    return low + (high - low) * torch.rand(shape, generator=g, device=g.device)


def _random_sign(n: int, g: torch.Generator) -> torch.Tensor:
    """[n] floats, each -1 or +1 with equal chance."""
    return torch.randint(0, 2, (n,), generator=g, device=g.device).float() * 2 - 1


def _filter_matrix(size: int, taps: torch.Tensor, edge: str) -> torch.Tensor:
    """[size, size] matrix M with (M @ v)[i] = sum_k taps[k] * v[i + k - len(taps) // 2].

    edge: "nearest" repeats the edge value (scipy's 'nearest', and its 'reflect' for 3 taps);
    "normalized" drops the points outside and rescales each row to sum to one, which is what
    skimage's canny does with its mask (mode 'constant' divided by the blurred mask).
    """
    radius = len(taps) // 2
    rows = torch.arange(size)[:, None]
    cols = rows + torch.arange(-radius, radius + 1)  # [size, taps]
    matrix = torch.zeros(size, size, dtype=torch.float64)
    if edge == "nearest":
        matrix.scatter_add_(1, cols.clamp(0, size - 1), taps.double().expand(size, -1))
        return matrix.float()
    inside = (cols >= 0) & (cols < size)
    matrix.scatter_add_(1, cols.clamp(0, size - 1), taps.double() * inside)
    return (matrix / matrix.sum(1, keepdim=True)).float()


def _gaussian_matrix(sigma: float, edge: str = "nearest", size: int = IMAGE_SIZE):
    """[size, size] 1-D Gaussian filter, truncated at 4 sigma as in scipy/skimage."""
    radius = int(4 * sigma + 0.5)
    taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    return _filter_matrix(size, taps / taps.sum(), edge)


def _separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows @ x @ cols.T for every image of x: [B, 1, H, W] -> [B, 1, H, W]."""
    return rows.to(x.device) @ x @ cols.to(x.device).T


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """skimage's `gaussian(x, sigma)` (edge repeated) of [B, 1, H, W]."""
    matrix = _gaussian_matrix(sigma)
    return _separable(x, matrix, matrix)


def _line(c0: torch.Tensor, r0: torch.Tensor, c1: torch.Tensor, r1: torch.Tensor):
    """The sum of MNIST-C's soft lines through (c0, r0) and (c1, r1): [B, 1, 28, 28], >= 0.

    All arguments are [B, S] (column, row) coordinates of S lines per image, c1 > c0. A line's
    value is 1 + log(1 - d / 2.3) with d the vertical distance to it (0 from d = 1.45 px on),
    drawn on columns floor(c0) .. ceil(c1) - 1 only.
    """
    batch = c0.shape[0]
    grid = torch.arange(IMAGE_SIZE, device=c0.device, dtype=torch.float32)
    slope = (r1 - r0) / (c1 - c0)
    centre = slope[..., None] * (grid - c0[..., None]) + r0[..., None]  # [B, S, W]: its row
    drawn = (grid >= c0.floor()[..., None]) & (grid < c1.ceil()[..., None])
    # Only rows under 1.46 px from the centre are lit, floor(centre) - 1 .. + 2: draw just those
    # 4 per column, not a whole [B, H, W] distance map per line (MNIST-C's zigzag has 12 lines).
    offsets = torch.arange(-1, 3, device=c0.device, dtype=torch.float32)
    rows = centre.floor()[..., None] + offsets  # [B, S, W, 4]
    dist = (rows - centre[..., None]).abs()
    profile = 1 + torch.log((1 - dist / 2.3).clamp(min=math.exp(-1)))
    profile = profile * (drawn[..., None] & (rows >= 0) & (rows < IMAGE_SIZE))
    pixel = rows.clamp(0, IMAGE_SIZE - 1).long() * IMAGE_SIZE + grid.long()[:, None]
    out = torch.zeros(batch, IMAGE_SIZE * IMAGE_SIZE, device=c0.device)
    out.scatter_add_(1, pixel.flatten(1), profile.flatten(1))
    return out.view(batch, 1, IMAGE_SIZE, IMAGE_SIZE)


# ---------------------------------------------------------------------------------------------
# Noise


def _shot_noise(x: torch.Tensor, photons: float, g: torch.Generator) -> torch.Tensor:
    """Poisson(x * photons) / photons per pixel."""
    lit = x > 0  # Poisson(0) is 0: sample only the digit's pixels (~20%), torch.poisson is slow
    out = torch.zeros_like(x)
    out[lit] = torch.poisson(x[lit] * photons, generator=g) / photons
    return out


def _impulse_noise(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    """A fraction `amount` of the pixels set to 0 or 1 (50/50), as skimage's 's&p' mode."""
    hit = _uniform(x.shape, g) < amount
    salt = _uniform(x.shape, g) < 0.5
    return torch.where(hit, salt.float(), x)


# ---------------------------------------------------------------------------------------------
# Blur


def _local_shuffle(x: torch.Tensor, max_delta: int, g: torch.Generator) -> torch.Tensor:
    """A random permutation of each image's pixels moving none more than max_delta per axis.

    x: [B, 1, H, W]. Along rows, then along columns, a random half of the pixels get the sort
    key i + max_delta + 1 - eps instead of i: each of them jumps ahead of up to max_delta others.
    """
    for dim, size in ((-1, x.shape[-1]), (-2, x.shape[-2])):
        position = torch.arange(size, device=x.device, dtype=torch.float32)
        position = position if dim == -1 else position[:, None]
        jump = torch.rand(x.shape, generator=g, device=g.device) < 0.5
        keys = position + jump * (max_delta + 0.999)
        x = x.gather(dim, keys.argsort(dim=dim))
    return x


def _glass_blur(x: torch.Tensor, params: tuple, g: torch.Generator) -> torch.Tensor:
    """Blur, locally shuffle pixels `iterations` times, blur again."""
    sigma, max_delta, iterations = params
    x = (_gaussian(x, sigma) * 255).floor() / 255  # the reference rounds to uint8 here
    for _ in range(iterations):
        x = _local_shuffle(x, max_delta, g)
    return _gaussian(x, sigma)


def _motion_blur(x: torch.Tensor, params: tuple, g: torch.Generator) -> torch.Tensor:
    """ImageMagick's motion blur: a one-sided Gaussian streak at a random angle per image."""
    radius, sigma = params
    batch, _, height, width = x.shape
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = (weights / weights.sum()).tolist()
    angle = torch.deg2rad(_uniform((batch, 1), g, -45.0, 45.0))
    taps = taps.float().to(x.device)
    dx = torch.ceil(taps * torch.cos(angle) - 0.5).long()  # [B, T]
    dy = torch.ceil(taps * torch.sin(angle) - 0.5).long()
    pad = len(weights)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")  # ImageMagick repeats the edge
    stride = width + 2 * pad
    flat = padded.reshape(batch, -1)
    rows = torch.arange(pad, pad + height, device=x.device)[:, None]
    cols = torch.arange(pad, pad + width, device=x.device)
    start = (rows * stride + cols).reshape(1, -1)  # [1, H * W] positions in `flat`
    shift = dy * stride + dx  # [B, T]
    out = torch.zeros(batch, height * width, device=x.device)
    for t, weight in enumerate(weights):
        if weight > 1e-6:  # the tail taps change no pixel by more than 1e-5
            out.add_(flat.gather(1, start + shift[:, t : t + 1]), alpha=weight)
    return out.reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Geometry. MNIST-C warps with skimage (bilinear, zero fill) under an inverse map about the
# centre pixel (13.5, 13.5); torchvision's affine/rotate sample the same way (a test checks it).
# They take one parameter set per call, so each sign pattern gets one call.


def _by_sign(x: torch.Tensor, signs: torch.Tensor, warp: Callable) -> torch.Tensor:
    """warp(images, pattern) once per distinct row `pattern` of signs: [B, 1, H, W].

    signs: [B, k] of -1.0 / +1.0, one row per image.
    """
    out = torch.empty_like(x)
    for pattern in signs.unique(dim=0):
        chosen = (signs == pattern).all(1)
        out[chosen] = warp(x[chosen], pattern.tolist())
    return out


def _shear_warp(x: torch.Tensor, s: float) -> torch.Tensor:
    """skimage's warp by AffineTransform(shear=s) (v0.14 parametrisation) about the centre.

    The inverse map [[1, -sin s], [0, cos s]] is a shear plus a 1 / cos s vertical stretch, which
    torchvision's affine (isotropic scale) cannot express; grid_sample does it, all images as
    channels of one image since they share the map.
    """
    theta = torch.tensor([[[1.0, -math.sin(s), 0.0], [0.0, math.cos(s), 0.0]]], device=x.device)
    stacked = x.transpose(0, 1)  # [1, B, H, W]
    grid = F.affine_grid(theta, list(stacked.shape), align_corners=False)
    out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.transpose(0, 1)


def _shear(x: torch.Tensor, angle: float, g: torch.Generator) -> torch.Tensor:
    """Shear by ±angle radians."""
    signs = _random_sign(x.shape[0], g)[:, None]
    return _by_sign(x, signs, lambda images, sign: _shear_warp(images, sign[0] * angle))


def _bilinear(warp: str, images: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """torchvision's `warp` ("affine", "rotate") of [B, 1, H, W] images, bilinear.

    Imported here: torchvision's import (~1.5 s, its models pull in torch._dynamo) is then paid
    only by a process that warps, not by every run that imports this module for its names.
    """
    from torchvision.transforms.v2 import InterpolationMode, functional

    return getattr(functional, warp)(images, interpolation=InterpolationMode.BILINEAR, **kwargs)


def _scale(x: torch.Tensor, size: float, g: torch.Generator) -> torch.Tensor:
    """The digit shrunk to `size` of its size about the centre."""
    return _bilinear("affine", x, angle=0.0, translate=[0, 0], scale=size, shear=[0.0, 0.0])


def _rotate(x: torch.Tensor, angle: float, g: torch.Generator) -> torch.Tensor:
    """Rotation by ±angle radians about the centre."""
    signs = _random_sign(x.shape[0], g)[:, None]
    degrees = math.degrees(angle)
    return _by_sign(
        x, signs, lambda images, sign: _bilinear("rotate", images, angle=sign[0] * degrees)
    )


def _translate(x: torch.Tensor, pixels: int, g: torch.Generator) -> torch.Tensor:
    """A shift by ±pixels along each axis, signs drawn independently."""
    batch = x.shape[0]
    signs = torch.stack([_random_sign(batch, g), _random_sign(batch, g)], 1)

    def shift(images: torch.Tensor, sign: list[float]) -> torch.Tensor:
        moved = [round(-pixels * s) for s in sign]  # an inverse map's +t moves content by -t
        return _bilinear("affine", images, angle=0.0, translate=moved, scale=1.0, shear=[0.0, 0.0])

    return _by_sign(x, signs, shift)


def _shift(x: torch.Tensor, pixels: int, g: torch.Generator) -> torch.Tensor:
    """Each digit moved `pixels` px (rounded to whole pixels) in a uniformly random direction."""
    return move(x, pixels, _uniform((x.shape[0],), g, 0.0, 2 * math.pi))


def _border_cut(x: torch.Tensor, share: float, g: torch.Generator) -> torch.Tensor:
    """Each digit pushed over a random side until `share` of its ink box is outside the frame.

    The ink box is the pixels above 0.1; the digit keeps its place along the other axis.
    """
    ink = x[:, 0] > 0.1  # [B, H, W]
    size = x.shape[-1]
    index = torch.arange(size, device=x.device)
    box = []  # first and last row, first and last column with ink: four [B]
    for axis in (2, 1):
        hit = ink.any(axis)  # [B, size]
        first = torch.where(hit, index, size).amin(1)
        last = torch.where(hit, index, -1).amax(1)
        box += [first, last]
    top, bottom, left, right = box
    cut_rows = torch.ceil(share * (bottom - top + 1).clamp(min=1)).to(torch.int64)
    cut_cols = torch.ceil(share * (right - left + 1).clamp(min=1)).to(torch.int64)
    side = torch.randint(0, 4, (x.shape[0],), generator=g, device=g.device)
    zero = torch.zeros_like(side)
    dy = torch.where(side == 0, -(top + cut_rows), zero)  # up: rows above 0 are gone
    dy = torch.where(side == 1, size - 1 - bottom + cut_rows, dy)  # down
    dx = torch.where(side == 2, -(left + cut_cols), zero)  # left
    dx = torch.where(side == 3, size - 1 - right + cut_cols, dx)  # right
    blank = ~ink.flatten(1).any(1)
    return shift(x, torch.where(blank, zero, dy), torch.where(blank, zero, dx))


# ---------------------------------------------------------------------------------------------
# Photometric and occlusion


def _brightness(x: torch.Tensor, amount: float, g: torch.Generator) -> torch.Tensor:
    """HSV value + amount, which for a grey image is x + amount."""
    return x + amount


def _stripe(x: torch.Tensor, width: int, g: torch.Generator) -> torch.Tensor:
    """The left and right `width` columns inverted."""
    x = x.clone()
    x[..., :width] = 1 - x[..., :width]
    x[..., -width:] = 1 - x[..., -width:]
    return x


def _plasma(maps: int, decay: float, g: torch.Generator, size: int = 256) -> torch.Tensor:
    """[maps, size, size] diamond-square fractals in [0, 1], as MNIST-C's `plasma_fractal`.

    Each level sets square centres, then edge midpoints, to the mean of their four neighbours
    (wrapping around) plus noise of amplitude wibble^2; wibble starts at 100 and is divided by
    `decay` per level, so a smaller decay gives rougher fog.
    """
    m = torch.zeros(maps, size, size, device=g.device)
    step, wibble = size, 100.0

    def noisy_mean(total: torch.Tensor) -> torch.Tensor:
        return total / 4 + wibble * _uniform(total.shape, g, -wibble, wibble)

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        around = corners + corners.roll(-1, 1)
        m[:, half::step, half::step] = noisy_mean(around + around.roll(-1, 2))
        centres, corners = m[:, half::step, half::step], m[:, ::step, ::step]
        top = centres + centres.roll(1, 1) + corners + corners.roll(-1, 2)
        left = centres + centres.roll(1, 2) + corners + corners.roll(-1, 1)
        m[:, ::step, half::step] = noisy_mean(top)
        m[:, half::step, ::step] = noisy_mean(left)
        step, wibble = half, wibble / decay
    m = m - m.amin((1, 2), keepdim=True)
    return m / m.amax((1, 2), keepdim=True)


def _fog(x: torch.Tensor, params: tuple, g: torch.Generator) -> torch.Tensor:
    """x + strength * plasma, times peak / (peak + strength) (peak: the image's maximum)."""
    strength, decay = params
    batch, size = x.shape[0], x.shape[-1]
    maps = _plasma(math.ceil(batch / 64), decay, g)
    window = torch.randperm(maps.shape[0] * 64, generator=g, device=g.device)[:batch]
    top, left = (window % 64) // 8 * 32, (window % 8) * 32
    offsets = torch.arange(size, device=x.device)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    fog = maps[(window // 64)[:, None, None], rows, cols][:, None]  # [B, 1, 28, 28]
    peak = x.amax((1, 2, 3), keepdim=True)
    return (x + strength * fog) * peak / (peak + strength)


def _spatter(x: torch.Tensor, params: tuple, g: torch.Generator) -> torch.Tensor:
    """Grey (63/255) mud blobs: thresholded smoothed Gaussian noise, softened, cores kept."""
    mean, std, liquid_sigma, threshold, mask_sigma = params
    liquid = _gaussian(
        mean + std * torch.randn(x.shape, generator=g, device=g.device), liquid_sigma
    )
    mud = _gaussian((liquid > threshold).float(), mask_sigma)
    mud = mud * (mud >= 0.8)
    return x * (1 - mud) + 63 / 255 * mud


def _dotted_line(x: torch.Tensor, params: tuple, g: torch.Generator) -> torch.Tensor:
    """Random lines from the left to the right edge, drawn in 2-pixel dashes."""
    count, intensity = params
    ends = torch.randint(0, 27, (2, x.shape[0], count), generator=g, device=g.device).float()
    left, right = torch.zeros_like(ends[0]), torch.full_like(ends[0], 27.0)
    dashes = (torch.arange(IMAGE_SIZE, device=x.device) // 2) % 2 == 1
    return x + intensity * _line(left, ends[0], right, ends[1]) * dashes


def _zigzag_vertices(batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(cols, rows), each [batch, V]: MNIST-C's zigzag from column 2 to 25 at a random slope.

    Teeth 2 px long and 2 px high along a line from (2, r0), r0 in [0, 26], to
    (25, r0 + k), k in [-5, 4]. The line is 23-23.6 px long, so the tooth count is the same for
    every image; the last vertex keeps the reference's formula.
    """
    a = b = 2.0
    r0 = torch.randint(0, 27, (batch, 1), generator=g, device=g.device).float()
    rise = torch.randint(-5, 5, (batch, 1), generator=g, device=g.device).float()
    theta = torch.atan(rise / 23)
    length = 23 / theta.cos()  # [B, 1]
    teeth = int((23 - a) // (2 * a)) + 1
    i = torch.arange(teeth, device=g.device, dtype=torch.float32)
    u = torch.cat([torch.zeros(1, device=g.device), (2 * i + 1) * a]).expand(batch, -1)
    v = torch.cat([torch.zeros(1, device=g.device), b * (-1) ** i]).expand(batch, -1)
    end = 2 * a * torch.floor(length / (2 * a))
    u = torch.cat([u, length], 1)
    v = torch.cat([v, v[:, -1:] / (2 * (length - end))], 1)
    cols = u * theta.cos() - v * theta.sin() + 2
    rows = u * theta.sin() + v * theta.cos() + r0
    return cols, rows


def _zigzag(x: torch.Tensor, params: tuple, g: torch.Generator) -> torch.Tensor:
    """Random zigzag lines across the digit."""
    count, intensity = params
    cols, rows = _zigzag_vertices(x.shape[0] * count, g)
    cols, rows = (v.reshape(x.shape[0], count, -1) for v in (cols, rows))
    start = [v[..., :-1].flatten(1) for v in (cols, rows)]  # [B, count * segments]
    end = [v[..., 1:].flatten(1) for v in (cols, rows)]
    return x + intensity * _line(start[0], start[1], end[0], end[1])


# ---------------------------------------------------------------------------------------------
# Canny edges


def _neighbours(m: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    """m[r + i, c + j] for each of the 8 offsets (i, j), zero outside: [B, 1, H, W] each."""
    height, width = m.shape[-2:]
    padded = F.pad(m, (1, 1, 1, 1))
    return {
        (i, j): padded[..., 1 + i : 1 + i + height, 1 + j : 1 + j + width]
        for i in (-1, 0, 1)
        for j in (-1, 0, 1)
        if (i, j) != (0, 0)
    }


def _non_max_suppression(
    magnitude: torch.Tensor, d_rows: torch.Tensor, d_cols: torch.Tensor
) -> torch.Tensor:
    """Pixels at least as strong as the two points one step along the gradient: [B, 1, H, W].

    As skimage: each point interpolates between the axis neighbour the gradient mostly points
    to and the diagonal neighbour, weighted by the ratio of the smaller to the larger component.
    (A zero component's sign does not matter: its weight is then 0, or the magnitude is 0.)
    """
    abs_r, abs_c = d_rows.abs(), d_cols.abs()
    steep = abs_r >= abs_c  # mostly along rows
    big = torch.where(steep, abs_r, abs_c).clamp(min=1e-12)
    w = torch.where(steep, abs_c, abs_r) / big
    up, left = d_rows < 0, d_cols < 0
    n = _neighbours(magnitude)

    def toward(up: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        diagonal = torch.where(
            up, torch.where(left, n[-1, -1], n[-1, 1]), torch.where(left, n[1, -1], n[1, 1])
        )
        vertical = torch.where(up, n[-1, 0], n[1, 0])
        horizontal = torch.where(left, n[0, -1], n[0, 1])
        return w * diagonal + (1 - w) * torch.where(steep, vertical, horizontal)

    return (magnitude >= toward(up, left)) & (magnitude >= toward(~up, ~left))


def _hysteresis(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """Weak pixels 8-connected to a strong one through weak pixels (bool [B, 1, H, W])."""
    edges = strong
    while True:
        grown = edges.clone()
        for shifted in _neighbours(edges).values():
            grown |= shifted
        grown &= weak
        if torch.equal(grown, edges):
            return edges
        edges = grown


def _canny(x: torch.Tensor, sigma: float, low: float = 0.1, high: float = 0.2) -> torch.Tensor:
    """skimage.feature.canny of [B, 1, H, W] as floats {0, 1}."""
    smooth = _gaussian_matrix(sigma, edge="normalized")
    derivative = _filter_matrix(IMAGE_SIZE, torch.tensor([-1.0, 0.0, 1.0]), "nearest")
    average = _filter_matrix(IMAGE_SIZE, torch.tensor([1.0, 2.0, 1.0]), "nearest")
    d_rows = _separable(x, derivative @ smooth, average @ smooth)  # scipy's sobel(axis=0)
    d_cols = _separable(x, average @ smooth, derivative @ smooth)
    magnitude = torch.hypot(d_rows, d_cols)
    maxima = _non_max_suppression(magnitude, d_rows, d_cols)
    maxima[..., [0, -1], :] = False  # skimage erodes the mask: no edges on the border
    maxima[..., :, [0, -1]] = False
    return _hysteresis(maxima & (magnitude >= low), maxima & (magnitude >= high)).float()


def _canny_edges(x: torch.Tensor, params: tuple, g: torch.Generator) -> torch.Tensor:
    """Canny edge map, over `kept` times the original digit."""
    sigma, kept = params
    return torch.maximum(_canny(x, sigma), kept * x)


_FUNCTIONS: dict[str, Apply] = {
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "shear": _shear,
    "scale": _scale,
    "rotate": _rotate,
    "brightness": _brightness,
    "translate": _translate,
    "stripe": _stripe,
    "fog": _fog,
    "spatter": _spatter,
    "dotted_line": _dotted_line,
    "zigzag": _zigzag,
    "canny_edges": _canny_edges,
    "shift": _shift,
    "border_cut": _border_cut,
}
SUITE.update({name: Corruption(apply, _LEVELS[name]) for name, apply in _FUNCTIONS.items()})
