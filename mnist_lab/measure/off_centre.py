"""`python -m mnist_lab.measure off-centre`: what the cleaning (centring by mass) does for a
model's digits, side by side with and without it on the same digits.

For each model (a folder holding a logged model's spec.json + weights.safetensors, e.g.
`<artifacts>/model/data/mnist_lab_model`): MNIST's 10 000 test digits (accuracy, ECE), the
large shifts per severity and MNIST-C's 15 corruptions at severity 3 on the first `--samples`
test digits, and each other source (fonts, handwriting per resolution; `--per-class` digits a
class) read as `predict` reads photos. Each large shift is also split by whether the digit kept
all its ink in the frame (`…_in_frame`, beside those digits unshifted: `…_in_frame_unshifted`)
or lost some to the border (`…_cut`, more than 1 % of its ink). Per model, McNemar's exact
test of with against without on the same digits; over models, the mean difference with its t
interval. Prints Markdown and writes every figure as JSON (`--out`); no MLflow run. Corruptions
are seeded as every run's report is (seed 0).

    python -m mnist_lab.measure off-centre --models DIR [DIR ...] --out off_centre.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mnist_lab.analysis.calibration import expected_calibration_error
from mnist_lab.analysis.corruptions import CORRUPTIONS, DEFAULT_SEVERITY, LARGE_SHIFTS, corrupt
from mnist_lab.analysis.sources import source_sets
from mnist_lab.analysis.statistics import mcnemar_exact, t_interval, wilson_interval
from mnist_lab.data.cleaning import clean
from mnist_lab.data.mnist import load_mnist
from mnist_lab.inference import load_module

PROG = "python -m mnist_lab.measure off-centre"
BATCH = 500


@torch.inference_mode()
def probabilities(model: torch.nn.Module, x: torch.Tensor, cleaned: bool) -> torch.Tensor:
    """[N, 10] softmax of the model on x [N, 1, 28, 28], cleaned first or not."""
    out = []
    for i in range(0, len(x), BATCH):
        batch = x[i : i + BATCH]
        out.append(model(clean(batch) if cleaned else batch).float().softmax(1))
    return torch.cat(out)


def figures(model, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Both ways: accuracy, Wilson interval, ECE, McNemar (only with, only without, p)."""
    raw, cleaned = (probabilities(model, x, c) for c in (False, True))
    hit_raw, hit_clean = (raw.argmax(1) == y).numpy(), (cleaned.argmax(1) == y).numpy()
    only_clean, only_raw, p = mcnemar_exact(hit_clean, hit_raw)
    row = {"n": len(y), "only_with": only_clean, "only_without": only_raw, "p": p}
    for name, probs, hits in (("without", raw, hit_raw), ("with", cleaned, hit_clean)):
        row[name] = {
            "accuracy": float(hits.mean()),
            "interval": wilson_interval(int(hits.sum()), len(hits)),
            "ece": expected_calibration_error(probs, y),
        }
    return row


CUT = 0.01  # a digit that lost more than this share of its ink to the border is cut


def ink_lost(x: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
    """The share of each digit's ink that `moved` lacks: [N] in [0, 1] from two [N, 1, H, W]."""
    before = x.sum(dim=(1, 2, 3)).clamp(min=1e-6)
    return (1 - moved.sum(dim=(1, 2, 3)) / before).clamp(min=0)


def corrupted(x: torch.Tensor, name: str, severity: int = DEFAULT_SEVERITY) -> torch.Tensor:
    """x under corruption `name`, BATCH at a time, batch k seeded k."""
    starts = range(0, len(x), BATCH)
    return torch.cat(
        [corrupt(x[i : i + BATCH], name, severity, seed=k) for k, i in enumerate(starts)]
    )


def measure(folder: Path, images, labels, samples: int, sets) -> dict:
    _, model = load_module(folder)
    result = {"clean": figures(model, images, labels)}
    x, y = images[:samples], labels[:samples]
    for name in LARGE_SHIFTS:
        for severity in (1, 2, 3, 4, 5):
            moved = corrupted(x, name, severity)
            row = f"{name}_{severity}"
            result[row] = figures(model, moved, y)
            if name != "shift":  # border_cut cuts every digit by construction
                continue
            cut = ink_lost(x, moved) > CUT
            if 0 < int(cut.sum()) < len(cut):
                result[f"{row}_in_frame"] = figures(model, moved[~cut], y[~cut])
                result[f"{row}_in_frame_unshifted"] = figures(model, x[~cut], y[~cut])
                result[f"{row}_cut"] = figures(model, moved[cut], y[cut])
    for name in CORRUPTIONS:
        result[f"{name}_{DEFAULT_SEVERITY}"] = figures(model, corrupted(x, name), y)
    for name, found in sets.items():
        result[name] = figures(
            model, torch.from_numpy(found.digits).unsqueeze(1), torch.from_numpy(found.labels)
        )
    return result


def table(results: dict[str, dict]) -> str:
    """Markdown: per row the mean over models of accuracy without → with, the mean difference
    with its t interval, and each model's McNemar p."""
    rows = next(iter(results.values())).keys()
    header = f"difference (t interval, {len(results)} models)"
    lines = [
        f"| digits | n a model | without cleaning | with cleaning | {header} | McNemar p each |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        without = [r[row]["without"]["accuracy"] for r in results.values()]
        with_ = [r[row]["with"]["accuracy"] for r in results.values()]
        diff = np.subtract(with_, without)
        low, high = t_interval(diff)
        ps = ", ".join(f"{r[row]['p']:.2g}" for r in results.values())
        n = next(iter(results.values()))[row]["n"]
        lines.append(
            f"| {row} | {n} | {100 * np.mean(without):.2f} % | {100 * np.mean(with_):.2f} % | "
            f"{100 * diff.mean():+.2f} ({100 * low:+.2f} … {100 * high:+.2f}) | {ps} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model folders")
    parser.add_argument("--samples", type=int, default=2000, help="test digits per corruption")
    parser.add_argument("--per-class", type=int, default=50, help="digits a class per source")
    parser.add_argument("--out", type=Path, default=Path("off_centre.json"))
    args = parser.parse_args(argv)
    mnist = load_mnist()
    images = mnist.test_images.unsqueeze(1).float() / 255
    sets = source_sets(args.per_class, seed=0)
    results = {}
    for folder in args.models:
        results[str(folder)] = measure(folder, images, mnist.test_labels, args.samples, sets)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"measured {folder}", flush=True)
    print(table(results))
    return 0
