"""Handwritten-like digits, neither MNIST's nor fonts: strokes drawn with a pen's dynamics,
scanned at low resolution, photographed on paper. Seeded and made on the fly, like
`font_digits`.

Each digit 0-9 has one or two skeletons (a few control points per stroke in a unit box, y down).
A writer perturbs the control points (about 4 % of the box), slants the digit (shear ±0.35),
turns it (±10°), narrows or widens it (width 0.45-0.85 of the height), and draws each stroke
as a Catmull-Rom curve through the points with a pen whose pressure rises at the start, falls
at the end and varies along the way; where the pen moves fast (long steps between the curve's
samples) the line is thinner and lighter. Hand tremor adds a smooth wobble. The stroke is drawn
8x supersampled, then reduced to the scan's resolution: the digit `scan_height` px tall (8, 12,
16 or 32 in `SOURCES`), which at 8-16 px leaves it blocky. The scan is enlarged to a photo
(nearest neighbour, as a phone's zoom of a small scan) and put on paper with
`font_digits`' paper, ink colours, lighting, blur and sensor noise.

`render(digit, scan_height, rng)` → one RGB photo (PIL); `handwriting_set(source, per_class,
seed)` → (photos, labels), each photo from its own seed (seed, source, digit, index).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from mnist_lab.data.font_digits import _compose, _degrade

# Source name → digit height in the scan (px). 8-16: low-resolution scans, enlarged.
SOURCES: dict[str, int] = {
    "handwriting_8px": 8,
    "handwriting_12px": 12,
    "handwriting_16px": 16,
    "handwriting_32px": 32,
}

# Skeletons: digit → variants → strokes → control points (x, y) in the unit box, y down.
_Stroke = list[tuple[float, float]]
SKELETONS: dict[int, list[list[_Stroke]]] = {
    0: [
        [
            [
                (0.5, 0.0),
                (0.15, 0.2),
                (0.08, 0.55),
                (0.3, 0.95),
                (0.7, 0.95),
                (0.92, 0.5),
                (0.8, 0.12),
                (0.5, 0.0),
                (0.4, 0.05),
            ]
        ],
    ],
    1: [
        [[(0.5, 0.0), (0.5, 0.5), (0.48, 1.0)]],
        [[(0.25, 0.2), (0.6, 0.0), (0.55, 0.5), (0.52, 1.0)]],
    ],
    2: [
        [
            [
                (0.12, 0.22),
                (0.4, 0.02),
                (0.75, 0.08),
                (0.82, 0.35),
                (0.5, 0.65),
                (0.1, 0.98),
                (0.5, 0.96),
                (0.92, 0.98),
            ]
        ],
    ],
    3: [
        [
            [
                (0.12, 0.1),
                (0.5, 0.0),
                (0.82, 0.18),
                (0.7, 0.4),
                (0.38, 0.48),
                (0.75, 0.58),
                (0.88, 0.8),
                (0.55, 1.0),
                (0.1, 0.88),
            ]
        ],
    ],
    4: [
        [
            [(0.55, 0.0), (0.3, 0.35), (0.08, 0.65), (0.5, 0.64), (0.92, 0.62)],
            [(0.7, 0.25), (0.68, 0.6), (0.66, 1.0)],
        ],
        [
            [(0.15, 0.0), (0.12, 0.4), (0.15, 0.6), (0.5, 0.6), (0.85, 0.58)],
            [(0.75, 0.0), (0.72, 0.5), (0.7, 1.0)],
        ],
    ],
    5: [
        [
            [(0.85, 0.02), (0.5, 0.0), (0.22, 0.02)],
            [
                (0.22, 0.02),
                (0.18, 0.45),
                (0.55, 0.38),
                (0.88, 0.62),
                (0.75, 0.92),
                (0.4, 1.0),
                (0.1, 0.88),
            ],
        ],
    ],
    6: [
        [
            [
                (0.72, 0.0),
                (0.38, 0.22),
                (0.15, 0.62),
                (0.3, 0.97),
                (0.68, 0.96),
                (0.82, 0.7),
                (0.55, 0.5),
                (0.2, 0.66),
            ]
        ],
    ],
    7: [
        [[(0.1, 0.02), (0.5, 0.0), (0.9, 0.02), (0.62, 0.5), (0.42, 1.0)]],
        [
            [(0.1, 0.02), (0.5, 0.0), (0.9, 0.02), (0.62, 0.5), (0.42, 1.0)],
            [(0.35, 0.5), (0.62, 0.5), (0.85, 0.48)],
        ],
    ],
    8: [
        [
            [
                (0.52, 0.47),
                (0.2, 0.3),
                (0.3, 0.04),
                (0.7, 0.04),
                (0.8, 0.28),
                (0.5, 0.48),
                (0.14, 0.72),
                (0.32, 0.98),
                (0.7, 0.98),
                (0.86, 0.72),
                (0.52, 0.47),
            ]
        ],
    ],
    9: [
        [
            [
                (0.82, 0.3),
                (0.55, 0.5),
                (0.2, 0.4),
                (0.25, 0.08),
                (0.6, 0.0),
                (0.82, 0.25),
                (0.76, 0.62),
                (0.62, 1.0),
            ]
        ],
        [
            [
                (0.8, 0.2),
                (0.5, 0.45),
                (0.18, 0.35),
                (0.3, 0.03),
                (0.7, 0.02),
                (0.82, 0.2),
                (0.8, 0.6),
                (0.78, 1.0),
            ]
        ],
    ],
}

SUPERSAMPLE = 8


def _catmull_rom(points: np.ndarray, per_segment: int = 24) -> np.ndarray:
    """[K, 2] control points → [(K - 1) * per_segment + 1, 2] points of the curve through them."""
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for p0, p1, p2, p3 in zip(padded, padded[1:], padded[2:], padded[3:], strict=False):
        out.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
        )
    return np.vstack([*out, points[-1:]])


def _smooth_noise(n: int, rng: np.random.Generator, knots: int = 5) -> np.ndarray:
    """[n] smooth noise in about [-1, 1]: random values at a few knots, linearly joined."""
    values = rng.uniform(-1, 1, knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), values)


def _ink(digit: int, scan_height: int, rng: np.random.Generator) -> np.ndarray:
    """The digit's ink coverage [H, W] in [0, 1] at the scan's resolution (digit `scan_height`
    px tall), with a margin of a quarter of that around it."""
    variants = SKELETONS[digit]
    strokes = variants[int(rng.integers(len(variants)))]
    width = rng.uniform(0.45, 0.85)
    shear, turn = rng.uniform(-0.35, 0.35), np.deg2rad(rng.uniform(-10, 10))
    forward = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]]) @ np.array(
        [[1.0, -shear], [0.0, 1.0]]
    )
    pen = rng.uniform(0.07, 0.16)  # stroke width, share of the digit's height
    curves = []
    for stroke in strokes:
        points = np.array(stroke) + rng.normal(0, 0.04, (len(stroke), 2))
        points = (points - 0.5) * [width, 1.0]
        curve = _catmull_rom(points) @ forward.T
        curve += 0.006 * np.stack([_smooth_noise(len(curve), rng, 9) for _ in range(2)], 1)
        curves.append(curve)
    everything = np.vstack(curves)
    low, high = everything.min(0) - pen, everything.max(0) + pen
    scale = scan_height * SUPERSAMPLE / (high[1] - low[1])  # the digit's height → scan_height
    margin = scan_height * SUPERSAMPLE // 4
    size = np.ceil((high - low) * scale).astype(int) + 2 * margin
    canvas = Image.new("L", (int(size[0]), int(size[1])), 0)
    draw = ImageDraw.Draw(canvas)
    for curve in curves:
        xy = (curve - low) * scale + margin
        n = len(xy)
        t = np.linspace(0, 1, n)
        pressure = np.clip(np.minimum(t / 0.12, (1 - t) / 0.15), 0.35, 1.0)
        pressure *= 1 + 0.2 * _smooth_noise(n, rng)
        step = np.linalg.norm(np.diff(xy, axis=0, prepend=xy[:1]), axis=1)
        speed = step / max(float(np.median(step)), 1e-6)
        thin = 1 / (1 + 0.25 * np.clip(speed - 1, 0, 3))  # fast: thinner, lighter
        radius = 0.5 * pen * scale * pressure * thin
        shade = np.clip(255 * (0.55 + 0.45 * pressure * thin), 0, 255)
        for (x, y), r, v in zip(xy, radius, shade, strict=True):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=int(v))
    w, h = canvas.size
    scan = canvas.resize(
        (max(1, round(w / SUPERSAMPLE)), max(1, round(h / SUPERSAMPLE))), Image.Resampling.BOX
    )
    return np.asarray(scan, dtype=np.float32) / 255.0


def render(digit: int, scan_height: int, rng: np.random.Generator) -> Image.Image:
    """One photo of a handwritten `digit` scanned `scan_height` px tall: RGB, dark ink on paper."""
    ink = _ink(digit, scan_height, rng)
    zoom = max(1, round(rng.uniform(56, 110) / scan_height))  # the digit 56-110 px in the photo
    h, w = ink.shape
    big = Image.fromarray((ink * 255).astype(np.uint8)).resize(
        (w * zoom, h * zoom), Image.Resampling.NEAREST
    )
    page = np.asarray(big, dtype=np.float32) / 255.0
    pad = [
        (int(rng.integers(2, 12 * zoom // 2 + 3)), int(rng.integers(2, 12 * zoom // 2 + 3)))
        for _ in range(2)
    ]
    page = np.pad(page, pad)
    return _degrade(_compose(page, rng), scan_height * zoom, rng)


def handwriting_set(
    source: str, per_class: int, seed: int = 0
) -> tuple[list[Image.Image], np.ndarray]:
    """`per_class` photos of each digit from `source` (a key of SOURCES): (photos, labels [N])."""
    if source not in SOURCES:
        raise ValueError(f"unknown handwriting source {source!r}; known: {', '.join(SOURCES)}")
    key = list(SOURCES).index(source)
    photos, labels = [], []
    for digit in range(10):
        for i in range(per_class):
            rng = np.random.default_rng([seed, key, digit, i])
            photos.append(render(digit, SOURCES[source], rng))
            labels.append(digit)
    return photos, np.array(labels, dtype=np.int64)
