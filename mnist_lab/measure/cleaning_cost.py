"""`python -m mnist_lab.measure cleaning`: what the cleaning every digit gets costs.

Times `mnist_lab.data.cleaning.clean` alone and the default CNN's forward pass with and without
it, side by side in one process, at batch 1 and 256 (median over repeats, MNIST test digits
moved by the `shift` corruption so the cleaning has work to do), and prints µs per digit. The
CNN (experiments/cnn.yaml's) is untrained: its cost does not depend on its weights. No MLflow run.

    python -m mnist_lab.measure cleaning --repeats 200
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mnist_lab.analysis.corruptions import corrupt
from mnist_lab.config import load_config
from mnist_lab.data.cleaning import clean
from mnist_lab.data.mnist import load_mnist
from mnist_lab.models.build import build_model

PROG = "python -m mnist_lab.measure cleaning"


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def per_digit_us(run: Callable[[], object], batch: int, repeats: int) -> float:
    """Median µs per digit of `run()` over `repeats` calls, after 5 warm-up calls."""
    for _ in range(5):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times) / batch


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per figure")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = load_mnist().test_images[:256].unsqueeze(1).float() / 255
    moved = corrupt(images, "shift", 3, seed=0)
    model = build_model("cnn", **load_config("cnn").resolved_model_options()).eval()
    print(
        f"{cpu_name()}, {args.threads} threads, torch "
        f"{torch.__version__}; µs per digit, median of {args.repeats}"
    )
    print("| batch | clean() | CNN | clean() + CNN |")
    print("|---|---|---|---|")
    with torch.inference_mode():
        for batch in (1, 256):
            x = moved[:batch]
            cleaning = per_digit_us(lambda x=x: clean(x), batch, args.repeats)
            cnn = per_digit_us(lambda x=x: model(x), batch, args.repeats)
            both = per_digit_us(lambda x=x: model(clean(x)), batch, args.repeats)
            print(f"| {batch} | {cleaning:.1f} | {cnn:.1f} | {both:.1f} |")
    return 0
