"""`python -m mnist_lab.measure cleaning`: what the cleaning every digit gets costs.

Times `mnist_lab.data.cleaning.clean` alone and the default CNN's forward pass with and without
it, side by side in one process, at batch 1 and 256 (median over repeats, MNIST test digits
moved by the `shift` corruption so the cleaning has work to do), and prints µs per digit. The
CNN (experiments/cnn.yaml's) is untrained: its cost does not depend on its weights. No MLflow run.
With `--output-dir results` the rows go to results/cleaning.md and .csv.

    python -m mnist_lab.measure cleaning --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mnist_lab.analysis.corruptions import corrupt
from mnist_lab.config import load_config
from mnist_lab.data.cleaning import clean
from mnist_lab.data.mnist import load_mnist
from mnist_lab.engine.device import machine_name
from mnist_lab.measure import results_table
from mnist_lab.models.build import build_model

PROG = "python -m mnist_lab.measure cleaning"
TABLE = results_table.Table(
    name="cleaning",
    title="What the cleaning costs: `clean` and the default CNN, µs a digit",
    command=f"{PROG} --output-dir results",
    header=(
        "`mnist_lab.data.cleaning.clean` alone, the default CNN's forward pass (untrained: its "
        "cost does not depend on its weights) and the two together, timed side by side in one "
        "process on MNIST test digits moved 6 px (so the cleaning has work to do); each cell "
        "the median of `repeats` calls (n), in µs a digit. No MLflow run. Times mean nothing "
        "beyond their machine, nor when other work shared its cores."
    ),
    columns=("threads", "batch", "n", "clean_us", "cnn_us", "clean_and_cnn_us"),
    key=("threads", "batch"),
    formats={"clean_us": "{:.1f}", "cnn_us": "{:.1f}", "clean_and_cnn_us": "{:.1f}"},
)


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
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per figure")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output-dir", default=None, help="write cleaning.md/.csv there")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = load_mnist().test_images[:256].unsqueeze(1).float() / 255
    moved = corrupt(images, "shift", 3, seed=0)
    model = build_model("cnn", **load_config("cnn").resolved_model_options()).eval()
    machine = machine_name(torch.device("cpu"))
    print(
        f"{machine}, {args.threads} threads, torch {torch.__version__}; µs per digit, "
        f"median of {args.repeats}"
    )
    print("| batch | clean() | CNN | clean() + CNN |")
    print("|---|---|---|---|")
    rows = []
    with torch.inference_mode():
        for batch in (1, 256):
            x = moved[:batch]
            cleaning = per_digit_us(lambda x=x: clean(x), batch, args.repeats)
            cnn = per_digit_us(lambda x=x: model(x), batch, args.repeats)
            both = per_digit_us(lambda x=x: model(clean(x)), batch, args.repeats)
            print(f"| {batch} | {cleaning:.1f} | {cnn:.1f} | {both:.1f} |")
            rows.append(
                {
                    "threads": args.threads,
                    "batch": batch,
                    "n": args.repeats,
                    "clean_us": cleaning,
                    "cnn_us": cnn,
                    "clean_and_cnn_us": both,
                }
            )
    if args.output_dir:
        print(f"wrote {results_table.write(TABLE, rows, args.output_dir, machine)}")
    return 0
