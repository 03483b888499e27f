"""`python -m mnist_lab.measure real-digits`: how well the models read digits that are not MNIST.

The set: digits 0-9 rendered with PIL from the TrueType/OpenType fonts installed here (every
.ttf/.otf under `FONT_DIRS` that draws ten distinct digits), each as a photo of dark ink on
light paper: random font size, stroke width (PIL `stroke_width`, or a 3×3 erosion for a thinner
pen), slant and rotation, digit height in the photo, position, paper size, paper colour, texture
and uneven lighting, ink colour and opacity, blur and sensor noise. Saved as
`DIR/<digit>/<font>-<k>.png` (RGB, of varied size) with `DIR/labels.csv` (file,digit,font) and
`DIR/fonts.txt`. Each image is drawn from its own seed (set seed, digit, index): the same seed on
the same fonts gives the same files. No font is held out: the models never saw any of them.

The lab's runs of it used the fonts of Debian's fonts-dejavu-core, fonts-liberation,
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
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_lab import names
from mnist_lab.data.font_digits import DIGITS, generate, read_labels
from mnist_lab.errors import EXIT_LAB_ERROR, LabError

PROG = "python -m mnist_lab.measure real-digits"

KIND = "real_digits"
METRIC = "real_digits_accuracy"
# Run params worth printing next to a model's accuracy: what it was trained with.
SHOWN_PARAMS = ("model", "epochs", "max_train_samples", "augment", "input_norm", "width", "dim")


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
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
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
        return EXIT_LAB_ERROR


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
