"""`python -m mnist_lab.measure sources-figure`: the picture docs/how-models-fail.md shows.

Per source (MNIST test digits moved 6 px by the `shift` corruption, fonts, handwriting at each
scan resolution): one digit of each class as given, as the model saw it after cleaning, and what
it read, for the model in `--model` (a logged model's folder holding spec.json and
weights.safetensors). No MLflow run.

    python -m mnist_lab.measure sources-figure --model DIR --out docs/images/sources.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mnist_lab.analysis.corruptions import corrupt
from mnist_lab.analysis.robustness import model_predict
from mnist_lab.analysis.sources import SourceSet, evaluate_sources, source_sets, sources_figure
from mnist_lab.data.mnist import load_mnist
from mnist_lab.inference import load_module

PROG = "python -m mnist_lab.measure sources-figure"


def shifted_mnist(per_class: int) -> SourceSet:
    """The first `per_class` test digits of each class, moved 6 px (shift, severity 3)."""
    mnist = load_mnist()
    picks = torch.cat([torch.nonzero(mnist.test_labels == d)[:per_class, 0] for d in range(10)])
    x = mnist.test_images[picks].unsqueeze(1).float() / 255
    moved = corrupt(x, "shift", 3, seed=0)[:, 0].numpy()
    photos = [Image.fromarray((m * 255).astype(np.uint8)).convert("RGB") for m in moved]
    return SourceSet(photos, moved, mnist.test_labels[picks].numpy())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a logged model's folder")
    parser.add_argument("--out", type=Path, default=Path("sources.png"))
    parser.add_argument("--per-class", type=int, default=1, help="digits a class per source")
    args = parser.parse_args(argv)
    _, model = load_module(args.model)
    sets = {"mnist_shift_6px": shifted_mnist(args.per_class), **source_sets(args.per_class)}
    scores = evaluate_sources(model_predict(model), sets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sources_figure(sets, scores).savefig(args.out, dpi=60)
    with Image.open(args.out) as drawn:  # 128 colours: a quarter of the bytes, small for git
        small = drawn.convert("RGB").quantize(128)
    small.save(args.out, optimize=True)
    print(f"wrote {args.out}")
    return 0
