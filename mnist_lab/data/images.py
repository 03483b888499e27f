"""A user's image files, IDX files or folders → MNIST-like digits [N, 28, 28] in [0, 1].

Images of any size, colour or grey, are made MNIST-like the way MNIST itself was made: grey,
light digit on black (inverted when the background is light), cropped to the ink, scaled to fit
a 20×20 box, then placed in 28×28 so that the centre of mass sits at the centre.

Two steps bring other digits' strokes nearer MNIST's, whose digits are binary ink (NIST's scans)
anti-aliased: every stroke at full strength, about 2-3 px wide.
- Even strokes: each pixel of the 20-px digit is divided by the brightest pixel near it (5×5),
  so a faint stroke (a pen lifting, a stroke thinner than a low-resolution scan's pixel) comes up
  to the others' strength; the divisor is at least `EVEN_FLOOR` × the ink's 90th percentile, so
  paper noise is not raised to ink.
- Bold strokes thinned: a digit whose strokes come out wider than `BOLD` px (bold fonts, 3.7 px
  typical) is eroded, at the photo's resolution, to about `STROKE` px.

Measured with the three default CNNs (experiments/cnn.yaml, seeds 0-2), each digit read before
and after; mean over the models, the difference with its t interval, McNemar's exact test per
model (AMD EPYC CPU). `source_sets(50, seed=1)`, n 500 a source: fonts 92.8 → 95.6 % (+2.8,
+1.1 … +4.5; p ≤ 0.021 each model), handwriting 8 px 92.2 → 94.5 (+2.3, -0.5 … +5.0), 12 px
98.0 → 98.9, 16 px 97.7 → 98.4 (+0.7, +0.5 … +1.0), 32 px 98.2 → 98.8. `source_sets(50,
seed=0)`, n 500: fonts 92.1 → 95.5 (+3.4, +2.4 … +4.4; p ≤ 0.0015 each), 8 px 93.6 → 94.2
(+0.6, -1.2 … +2.4), 12 px 96.9 → 98.0, 16 px 97.3 → 98.3 (+1.1, +0.3 … +1.8), 32 px
97.5 → 97.9. A 3×3 square did better on 12-32 px (+0.8 to +1.9) and worse on fonts and 8 px
(both seeds), where the sources fall short. MNIST's 10 000 test digits saved as PNG: 99.4 →
99.5 % (+0.09, +0.00 … +0.18; 10/2, 7/1, 13/0 digits only after/only before), 0.003 a pixel
changed on average, most of it the boldest digits thinned.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from scipy import ndimage

from mnist_lab.data.cleaning import centre_by_mass
from mnist_lab.data.mnist import read_idx
from mnist_lab.errors import DataError, LabError
from mnist_lab.names import IMAGE_SIZE

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


IDX_UBYTE_MAGIC = b"\x00\x00\x08"  # then 3 (images) or 1 (labels)


BOX = 20  # MNIST's digits fit a 20×20 box inside the 28×28 field


INK = 0.1  # pixels above this (in [0, 1], after inversion) count as the digit


NEIGHBOURHOOD = 5  # even strokes: px, the square a pixel's brightest neighbour is sought in
EVEN_FLOOR = 0.3  # even strokes: a stroke fainter than this share of the ink is left faint
BOLD = 4.3  # px in the 20-px box: wider strokes are thinned (MNIST's: 2.9 median, 3.9 at p90)
STROKE = 3.0  # px: what bold strokes are thinned to


class InputError(LabError):
    """An input file or folder that cannot be read as digits."""


def mnist_style(image: Image.Image) -> np.ndarray:
    """Any PIL image → [28, 28] float32 in [0, 1], light digit on black, centred by mass.

    A photo of ink on paper is first cleaned the way a scan would be: divided by the paper's
    uneven lighting (a plane fitted to the border pixels), and what stays within `NOISE_FLOOR`
    robust standard deviations of the paper (texture, sensor noise) becomes black.
    The ink box is found on a 3×3 median of that, so stray specks do not widen the crop. A
    clean digit on a uniform background (an MNIST digit saved as PNG) passes unchanged, but for
    the module's two stroke steps: faint strokes evened out, bold ones (> BOLD px) thinned.
    """
    if image.mode in ("RGBA", "LA", "P"):  # transparent background → white paper
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    grey = np.asarray(ImageOps.grayscale(image), dtype=np.float32) / 255.0
    if np.median(_border(grey)) > 0.5:  # dark ink on light paper: light = paper × lamp
        grey = 1.0 - grey / np.maximum(_border_plane(grey), 1e-3)
    else:  # a light digit on a dark ground: any glow adds
        grey = grey - _border_plane(grey)
    grey = _below_noise_floor_removed(grey)
    peak = float(grey.max())
    if peak < 1e-3:  # a blank image: nothing to centre
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    grey = grey / peak
    rows, cols = np.nonzero(_ink_mask(grey))
    if len(rows) == 0:  # ink only in specks: keep them rather than nothing
        rows, cols = np.nonzero(grey > INK)
    crop = grey[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    digit = _even_strokes(_boxed(crop))
    width = stroke_width(digit)
    if width > BOLD:  # erode at the photo's resolution: by (width - STROKE) / 2 each side
        radius = (width - STROKE) / 2 * max(crop.shape) / BOX
        if radius >= 0.5:
            digit = _even_strokes(_boxed(ndimage.grey_erosion(crop, footprint=_disk(radius))))
    field = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    top, left = (IMAGE_SIZE - digit.shape[0]) // 2, (IMAGE_SIZE - digit.shape[1]) // 2
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return centre_by_mass(torch.from_numpy(field)[None, None])[0, 0].numpy()


def _boxed(crop: np.ndarray) -> np.ndarray:
    """[h, w] ink in [0, 1] → the same scaled (LANCZOS) so its longer side is BOX px."""
    scale = BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255.0


def _even_strokes(digit: np.ndarray) -> np.ndarray:
    """[h, w] → [h, w] in [0, 1]: each pixel over the brightest of its NEIGHBOURHOOD² square (at
    least EVEN_FLOOR × the ink's 90th percentile), so every stroke reaches full strength. A
    digit already at full strength (MNIST's) is left nearly as it is."""
    ink = digit[digit > INK]
    if ink.size < 4:
        return digit
    local = ndimage.grey_dilation(digit, size=(NEIGHBOURHOOD, NEIGHBOURHOOD))
    return np.clip(digit / np.maximum(local, EVEN_FLOOR * np.percentile(ink, 90)), 0.0, 1.0)


def stroke_width(digit: np.ndarray) -> float:
    """A digit's stroke width in px ([h, w] in [0, 1]): its ink twice over the boundary pixels
    of its > 0.5 mask (ink area over half the outline); 0 for a digit with no such pixel."""
    mask = digit > 0.5
    if not mask.any():
        return 0.0
    outline = mask & ~ndimage.binary_erosion(mask)
    return 2 * float(digit.sum()) / int(outline.sum())


def _disk(radius: float) -> np.ndarray:
    """bool [2k + 1, 2k + 1]: the pixels within `radius` of the centre, k = ceil(radius)."""
    k = int(np.ceil(radius))
    ys, xs = np.mgrid[-k : k + 1, -k : k + 1]
    return xs * xs + ys * ys <= radius * radius + 1e-6


NOISE_FLOOR = 4.0  # robust standard deviations of the paper that still count as paper


def _border(grey: np.ndarray) -> np.ndarray:
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def _border_plane(grey: np.ndarray) -> np.ndarray:
    """[H, W]: the plane a + b·y + c·x that fits the border pixels best (least squares), i.e.
    the paper's brightness under uneven light, wherever the digit does not touch the border."""
    h, w = grey.shape
    ys, xs = np.indices((h, w), dtype=np.float32)
    design = np.stack([np.ones_like(_border(ys)), _border(ys), _border(xs)], axis=1)
    (a, b, c), *_ = np.linalg.lstsq(design, _border(grey), rcond=None)
    return a + b * ys[:, :1] + c * xs[:1, :]  # broadcast: one [H, W] array


def _below_noise_floor_removed(ink: np.ndarray) -> np.ndarray:
    """[H, W] ink (paper ≈ 0) minus NOISE_FLOOR robust standard deviations of the border
    (paper grain, sensor noise), clipped at 0."""
    paper = _border(ink)
    spread = 1.4826 * float(np.median(np.abs(paper - np.median(paper))))  # MAD → sigma
    return np.clip(ink - float(np.median(paper)) - NOISE_FLOOR * spread, 0.0, None)


def _ink_mask(grey: np.ndarray) -> np.ndarray:
    """[H, W] bool: the ink pixels (> INK) next to ink a 3×3 median keeps. Lone specks go; the
    tips of thin strokes, which the median trims, stay, so the box is the ink's own."""
    eight = Image.fromarray((grey * 255).astype(np.uint8))
    kept = eight.filter(ImageFilter.MedianFilter(3)).point(lambda v: 255 if v > INK * 255 else 0)
    return (grey > INK) & (np.asarray(kept.filter(ImageFilter.MaxFilter(3))) > 0)


def read_image(path: Path) -> np.ndarray:
    """One image file → [28, 28] float32; InputError naming the file if it is not an image."""
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty; give a PNG/JPG image or an IDX file")
    try:
        with Image.open(path) as image:
            image.load()
            return mnist_style(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise InputError(
            f"{path}: not a readable image ({err}); give PNG/JPG images or IDX files"
        ) from None


def is_idx(path: Path) -> bool:
    """IDX (unsigned byte) files by content, plain or gzipped; labels are refused later."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            return f.read(3) == IDX_UBYTE_MAGIC
    except OSError:
        return False


def read_idx_images(path: Path) -> np.ndarray:
    """[N, 28, 28] float32 in [0, 1] from an IDX image file."""
    try:
        images = read_idx(path)
    except DataError as err:
        raise InputError(str(err)) from None
    if images.ndim != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(
            f"{path}: an IDX file of shape {list(images.shape)} (labels?), not 28×28 images"
        )
    return images.numpy().astype(np.float32) / 255.0


def collect(paths: list[str | Path]) -> tuple[list[str], np.ndarray]:
    """Every input as (source names, [N, 28, 28] float32 in [0, 1]); folders are expanded."""
    if not paths:
        raise InputError("no input given; name image files, IDX files or a folder")
    sources: list[str] = []
    batches: list[np.ndarray] = []
    for path in map(Path, paths):
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or is_idx(p)
            )
            if not files:
                raise InputError(
                    f"{path}: the folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                    "or IDX files"
                )
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"{path}: no such file or folder")
        for file in files:
            if is_idx(file):
                images = read_idx_images(file)
                sources += [f"{file}[{i}]" for i in range(len(images))]
                batches.append(images)
            else:
                sources.append(str(file))
                batches.append(read_image(file)[None])
    return sources, np.concatenate(batches)
