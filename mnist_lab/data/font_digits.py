"""Photos of digits that are not MNIST: 0-9 rendered from the installed fonts as dark ink on
light paper, to measure how the models read real-world digits (`python -m mnist_lab.measure
real-digits`).

Each image: random font size, stroke width (PIL `stroke_width`, or a 3×3 erosion for a thinner
pen), slant and rotation, digit height in the photo, position, paper size, colour, texture and
uneven lighting, ink colour and opacity, blur and sensor noise. A set is saved as
`DIR/<digit>/<font>-<k>.png` (RGB, of varied size) with `DIR/labels.csv` (file,digit,font) and
`DIR/fonts.txt`. Each image is drawn from its own seed (set seed, digit, index): the same seed
on the same fonts gives the same files.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mnist_lab.errors import LabError

FONT_DIRS: tuple[Path, ...] = (
    # matplotlib's own DejaVu fonts: there on every machine that runs this project
    Path(matplotlib.get_data_path()) / "fonts" / "ttf",
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".local/share/fonts",
    Path.home() / ".fonts",
)
FONT_SUFFIXES = {".ttf", ".otf"}
# Fonts whose 0-9 code points draw pictures, not digits: URW's and Microsoft's dingbats, and
# matplotlib's TeX math extension and symbol fonts (cmex10: parentheses and brackets, cmsy10:
# ∞, ∈, △, ∀, ...), which made 2 of its 34 fonts, about 6 % of every fonts set, unreadable.
SYMBOL_FONTS = ("D050000L", "Dingbats", "Wingdings", "Webdings", "cmex10", "cmsy10")
FONT_PACKAGES = (
    "fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-comic-neue "
    "fonts-humor-sans"
)
LABELS = "labels.csv"
FONTS = "fonts.txt"
DIGITS = tuple(range(10))


class RealDigitsError(LabError):
    """No fonts to render with, a bad set size, or an output folder that is not ours."""


@dataclass(frozen=True)
class Font:
    name: str  # the file's stem, e.g. DejaVuSans-Bold
    path: Path


# --- fonts --------------------------------------------------------------------------------


def find_fonts(dirs: Sequence[Path] | None = None) -> list[Font]:
    """Every usable font under `dirs` (default FONT_DIRS), by name; a RealDigitsError if none."""
    dirs = FONT_DIRS if dirs is None else dirs
    found: dict[str, Path] = {}
    for folder in dirs:
        if folder.is_dir():
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in FONT_SUFFIXES:
                    found.setdefault(path.stem, path)
    usable = [n for n in sorted(found) if not n.startswith(SYMBOL_FONTS) and draws_digits(found[n])]
    fonts = [Font(name, found[name]) for name in usable]
    if not fonts:
        raise RealDigitsError(
            f"no TrueType/OpenType font that draws the digits 0-9 under "
            f"{', '.join(map(str, dirs))}; install some, e.g. `apt-get install -y "
            f"{FONT_PACKAGES}`"
        )
    return fonts


def draws_digits(path: Path) -> bool:
    """Whether the font at `path` loads and draws ten different glyphs for 0-9 (a font without
    digits draws the same placeholder box for all)."""
    try:
        face = ImageFont.truetype(str(path), 32)
        masks = {_mask_bytes(face, str(d)) for d in DIGITS}
    except (OSError, ValueError):
        return False
    return len(masks) == len(DIGITS)


def _mask_bytes(face: ImageFont.FreeTypeFont, text: str) -> bytes:
    mask = face.getmask(text)
    return bytes(mask) + bytes(str(mask.size), "ascii")


# --- rendering ----------------------------------------------------------------------------


def render(font: Font, digit: int, rng: np.random.Generator) -> Image.Image:
    """One photo of `digit` in `font`: dark ink on light paper, RGB, of random size."""
    height = float(np.exp(rng.uniform(np.log(16), np.log(110))))  # digit height in the photo
    ink = _place(_glyph(font, digit, rng), height, rng)
    return _degrade(_compose(ink, rng), height, rng)


def _glyph(font: Font, digit: int, rng: np.random.Generator) -> np.ndarray:
    """The digit's ink coverage [H, W] in [0, 1], slanted, rotated, cropped to the ink."""
    size = int(rng.integers(40, 97))
    stroke = int(rng.integers(0, size // 16 + 1))
    face = ImageFont.truetype(str(font.path), size)
    canvas = Image.new("L", (4 * size, 4 * size), 0)
    ImageDraw.Draw(canvas).text(
        (2 * size, 2 * size), str(digit), fill=255, font=face, anchor="mm", stroke_width=stroke
    )
    if stroke == 0 and rng.random() < 0.3:  # a thinner pen, unless that wipes the digit out
        thinner = canvas.filter(ImageFilter.MinFilter(3))
        if np.asarray(thinner).sum() > 0.5 * np.asarray(canvas).sum():
            canvas = thinner
    canvas = _slant(canvas, shear=rng.uniform(-0.3, 0.3), degrees=rng.uniform(-12, 12))
    alpha = np.asarray(canvas, dtype=np.float32) / 255.0
    rows, cols = np.nonzero(alpha > 0.03)
    return alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _slant(image: Image.Image, shear: float, degrees: float) -> Image.Image:
    """`image` sheared along x (italic for shear > 0) then rotated, about its centre."""
    theta = np.deg2rad(degrees)
    rotate = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rotate @ np.array([[1.0, -shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)  # PIL maps output pixels back to input pixels
    centre = np.array(image.size, dtype=np.float64) / 2
    offset = centre - inverse @ centre
    coeffs = (*inverse[0], offset[0], *inverse[1], offset[1])
    return image.transform(image.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BICUBIC)


def _place(glyph: np.ndarray, height: float, rng: np.random.Generator) -> np.ndarray:
    """The glyph scaled to `height` px and put at a random place on a page of random size and
    shape: the page's ink coverage [H, W]."""
    scale = height / glyph.shape[0]
    gh, gw = max(1, round(glyph.shape[0] * scale)), max(1, round(glyph.shape[1] * scale))
    small = Image.fromarray((glyph * 255).astype(np.uint8)).resize((gw, gh), Image.Resampling.BOX)
    page_h = max(gh + 4, round(gh / rng.uniform(0.3, 0.85)))
    page_w = max(gw + 4, round(page_h * rng.uniform(0.6, 1.5)))
    top, left = int(rng.integers(2, page_h - gh - 1)), int(rng.integers(2, page_w - gw - 1))
    page = np.zeros((page_h, page_w), np.float32)
    page[top : top + gh, left : left + gw] = np.asarray(small, dtype=np.float32) / 255.0
    return page


def _compose(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Paper (colour, texture, uneven light) with ink of a random colour: [H, W, 3] in 0-255."""
    paper = _paper(ink.shape, rng)
    pens = ([25, 25, 30], [25, 35, 110], [60, 60, 65], [15, 40, 70])  # black, blue, pencil, navy
    pen = np.array(pens[int(rng.integers(len(pens)))], np.float32) + rng.uniform(-10, 10, 3)
    alpha = (ink * rng.uniform(0.75, 1.0))[..., None]
    return paper * (1 - alpha) + pen * alpha


def _paper(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Light paper [H, W, 3]: a tint, a soft texture and a lighting gradient."""
    h, w = shape
    colour = rng.uniform(195, 250) + np.array([4.0, 0.0, -6.0]) * rng.uniform(0, 2)
    coarse = rng.normal(0, 1, (h // 8 + 2, w // 8 + 2)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * xs / w + np.sin(angle) * ys / h) + 0.5
    light = 1 - rng.uniform(0, 0.15) * np.clip(ramp, 0, 1.5)
    grey = texture * rng.uniform(0, 4)
    return np.clip((colour[None, None, :] + grey[..., None]) * light[..., None], 0, 255)


def _degrade(photo: np.ndarray, height: float, rng: np.random.Generator) -> Image.Image:
    """Blur (defocus, up to 4 % of the digit's `height`) and sensor noise, as 8-bit RGB."""
    image = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), "RGB")
    radius = rng.uniform(0, 0.04) * height
    if radius > 0.2:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    noisy = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(1, 8), (*image.size[::-1], 3))
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8), "RGB")


# --- the set ------------------------------------------------------------------------------


def generate(
    out: Path, per_class: int, seed: int = 0, fonts: list[Font] | None = None
) -> list[dict[str, str]]:
    """Write `per_class` photos of each digit to `out` (fonts taken in turn) with labels.csv;
    returns its rows (file relative to `out`, digit, font)."""
    if per_class < 1:
        raise RealDigitsError(f"per_class={per_class}: give at least 1 image per digit")
    fonts = find_fonts() if fonts is None else fonts
    _clear(out)
    rows = []
    for digit in DIGITS:
        (out / str(digit)).mkdir(parents=True)
        for i in range(per_class):
            font = fonts[(i + digit) % len(fonts)]
            file = f"{digit}/{font.name}-{(i + digit) // len(fonts)}.png"
            rng = np.random.default_rng([seed, digit, i])
            render(font, digit, rng).save(out / file)
            rows.append({"file": file, "digit": str(digit), "font": font.name})
    _write_labels(out, rows)
    (out / FONTS).write_text("".join(f"{f.name}\t{f.path}\n" for f in fonts))
    return rows


def _clear(out: Path) -> None:
    """Make `out` an empty folder; refuse one that holds anything but an earlier set."""
    if out.exists():
        ours = {LABELS, FONTS, *map(str, DIGITS)}
        strays = sorted(p.name for p in out.iterdir() if p.name not in ours)
        if strays or not out.is_dir():
            raise RealDigitsError(
                f"--out {out}: not empty and not a real-digits set ({', '.join(strays[:3])}); "
                "give a new or empty folder"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)


def _write_labels(out: Path, rows: list[dict[str, str]]) -> None:
    with open(out / LABELS, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "digit", "font"])
        writer.writeheader()
        writer.writerows(rows)


def read_labels(out: Path) -> list[dict[str, str]]:
    """labels.csv of the set in `out`, or a RealDigitsError if there is none."""
    try:
        with open(out / LABELS, newline="") as f:
            return list(csv.DictReader(f))
    except OSError as err:
        raise RealDigitsError(f"{out / LABELS}: {err.strerror}; generate the set first") from None
