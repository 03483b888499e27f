"""`python -m mnist_lab.measure real-digits`: how well the models read digits that are not MNIST.

The set: digits 0-9 rendered with PIL from the TrueType/OpenType fonts installed here (every
.ttf/.otf under `FONT_DIRS` that draws ten distinct digits), each as a photo of dark ink on
light paper: random font size, stroke width (PIL `stroke_width`, or a 3×3 erosion for a thinner
pen), slant and rotation, digit height in the photo, position, paper size, paper colour, texture
and uneven lighting, ink colour and opacity, blur and sensor noise. Saved as
`DIR/<digit>/<font>-<k>.png` (RGB, of varied size) with `DIR/labels.csv` (file,digit,font) and
`DIR/fonts.txt`. Each image is drawn from its own seed (set seed, digit, index): the same seed on
the same fonts gives the same files. No font is held out: the models never saw any of them.

The figures in the report used the fonts of Debian's fonts-dejavu-core, fonts-liberation,
fonts-freefont-ttf, fonts-urw-base35, fonts-comic-neue and fonts-humor-sans
(`apt-get install -y fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35
fonts-comic-neue fonts-humor-sans`); with other fonts the set, and the figures, differ.

The set is read back through `mnist_lab.data.images.collect`, the MNIST-style preprocessing
`predict` uses, and each model's accuracy is printed overall, per digit and for its worst fonts,
and logged as a small MLflow run (tag kind=real_digits, metric `real_digits_accuracy`) unless
--no-log.

    python -m mnist_lab.measure real-digits --out /tmp/real-digits --per-class 100 --run-id <id>
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mnist_lab import names
from mnist_lab.errors import LabError

PROG = "python -m mnist_lab.measure real-digits"

FONT_DIRS: tuple[Path, ...] = (
    # matplotlib's own DejaVu fonts: there on every machine that runs this project
    Path(matplotlib.get_data_path()) / "fonts" / "ttf",
    Path("/usr/share/fonts"),
    Path("/usr/local/share/fonts"),
    Path.home() / ".local/share/fonts",
    Path.home() / ".fonts",
)
FONT_SUFFIXES = {".ttf", ".otf"}
# Fonts whose 0-9 code points draw pictures, not digits (URW's and Microsoft's dingbats).
SYMBOL_FONTS = ("D050000L", "Dingbats", "Wingdings", "Webdings")
FONT_PACKAGES = (
    "fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-urw-base35 fonts-comic-neue "
    "fonts-humor-sans"
)
LABELS = "labels.csv"
FONTS = "fonts.txt"
DIGITS = tuple(range(10))
KIND = "real_digits"
METRIC = "real_digits_accuracy"
# Run params worth printing next to a model's accuracy: what it was trained with.
SHOWN_PARAMS = ("model", "epochs", "max_train_samples", "augment", "input_norm", "width", "dim")


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


# --- evaluation ---------------------------------------------------------------------------


@dataclass
class Score:
    """One model's accuracy on the set."""

    model: str  # the model URI
    accuracy: float
    per_digit: dict[int, float]
    per_font: dict[str, float]
    confusions: list[tuple[int, int, int]]  # (true, predicted, count), most frequent first


def score(model_uri: str, predicted: np.ndarray, rows: list[dict[str, str]]) -> Score:
    """Accuracy of `predicted` digits against the set's labels, overall, per digit and font."""
    labels = np.array([int(r["digit"]) for r in rows])
    fonts = np.array([r["font"] for r in rows])
    right = predicted == labels
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(labels[~right], predicted[~right], strict=True):
        pairs[int(t), int(p)] = pairs.get((int(t), int(p)), 0) + 1
    return Score(
        model=model_uri,
        accuracy=float(right.mean()),
        per_digit={d: float(right[labels == d].mean()) for d in DIGITS if (labels == d).any()},
        per_font={f: float(right[fonts == f].mean()) for f in sorted(set(fonts))},
        confusions=sorted(((t, p, n) for (t, p), n in pairs.items()), key=lambda x: -x[2]),
    )


def predict_set(model_uri: str, out: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """The digit the model at `model_uri` reads in each image, through `collect` and `predict`."""
    from mnist_lab import tracking
    from mnist_lab.data.images import collect
    from mnist_lab.serving.predict import predict

    sources, images = collect([out / r["file"] for r in rows])
    model = tracking.load_model(model_uri)
    return np.array([p.digit for p in predict(model, sources, images)])


def describe_run(run_id: str | None) -> str:
    """What the run that logged a model trained: its SHOWN_PARAMS and git commit."""
    if run_id is None:
        return "no run (a model path)"
    from mnist_lab import tracking

    run = tracking.get_run(run_id)
    shown = [f"{k}={run.params[k]}" for k in SHOWN_PARAMS if k in run.params]
    commit = run.tags.get(names.TAG_GIT_COMMIT, "?")[:10]
    return f"run {run_id}: {' '.join(shown)} commit={commit}"


def report(result: Score, worst_fonts: int = 5) -> str:
    """A few lines: accuracy overall, per digit, the worst fonts and the commonest mistakes."""
    digits = "  ".join(f"{d}:{a:.0%}" for d, a in result.per_digit.items())
    fonts = sorted(result.per_font.items(), key=lambda x: x[1])[:worst_fonts]
    mistakes = ", ".join(f"{t}→{p} ×{n}" for t, p, n in result.confusions[:6])
    return (
        f"  accuracy {result.accuracy:.2%}\n  per digit  {digits}\n"
        f"  worst fonts  {', '.join(f'{f} {a:.0%}' for f, a in fonts)}\n"
        f"  commonest mistakes  {mistakes or 'none'}"
    )


def log_score(result: Score, run_id: str | None, set_params: dict[str, object]) -> str:
    """`result` as an MLflow run tagged kind=real_digits; returns its id."""
    from mnist_lab import tracking

    tags = {names.TAG_KIND: KIND, names.TAG_SOURCE_RUN_ID: run_id or ""}
    with tracking.run(run_name=f"real-digits {run_id or result.model}", tags=tags) as active:
        tracking.log_params({**set_params, "model_uri": result.model})
        metrics = {METRIC: result.accuracy}
        metrics |= {f"{METRIC}_{d}": a for d, a in result.per_digit.items()}
        tracking.log_metrics(metrics)
        tracking.log_dict({"per_font": result.per_font}, "reports/real_digits.json")
        return active.info.run_id


# --- command line -------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("real_digits"), help="the set's folder")
    parser.add_argument("--per-class", type=_positive, default=100, help="images per digit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model-uri", nargs="+", action="extend", default=[], help="models to evaluate"
    )
    parser.add_argument(
        "--run-id", nargs="+", action="extend", default=[], help="train runs whose model to use"
    )
    parser.add_argument("--no-log", action="store_true", help="print only, log no MLflow run")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate the set already in --out, do not redraw"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    rows = read_labels(args.out) if args.reuse else generate(args.out, args.per_class, args.seed)
    fonts = sorted({r["font"] for r in rows})
    print(f"set {args.out}: {len(rows)} images, {len(fonts)} fonts, seed {args.seed}", flush=True)
    print(f"fonts: {', '.join(fonts)}", flush=True)
    set_params = {"seed": args.seed, "images": len(rows), "fonts": len(fonts)}
    for uri, run_id in _models(args.model_uri, args.run_id):
        print(f"{uri}  ({describe_run(run_id)})", flush=True)
        result = score(uri, predict_set(uri, args.out, rows), rows)
        print(report(result), flush=True)
        if not args.no_log:
            print(f"  logged as run {log_score(result, run_id, set_params)}", flush=True)
    return 0


def _models(uris: list[str], run_ids: list[str]) -> list[tuple[str, str | None]]:
    """(model URI, the run that logged it) for each --model-uri and --run-id."""
    if not uris and not run_ids:
        return []
    from mnist_lab import tracking  # mlflow: slow to import, needed only for models

    models = [(uri, tracking.source_run_id(uri)) for uri in uris]
    return models + [(tracking.run_model_uri(run_id), run_id) for run_id in run_ids]


if __name__ == "__main__":
    raise SystemExit(main())
