"""`python -m mnist_lab.measure tuning`: a tuning study's speed, with and without pruning.

1. A CNN study (tuning/cnn.yaml's space) on a subset with the default pruner (Hyperband).
2. The same study without pruning on the same time budget (the first study's wall time).

Each study gets a fresh storage and study name, and every figure is a metric of an MLflow run
(experiment `mnist-lab-bench` unless MLFLOW_EXPERIMENT_NAME says otherwise). What the figures
show is speed: trials a minute and the share pruned. Whether the winner beats the defaults is
a claim for `tune --confirm-seeds K` (`--confirm-seeds K` here passes it on: the winner and
the defaults retrained at K seeds and tested, docs/comparisons.md), never one run against one.

    python -m mnist_lab.measure tuning                        # 20 trials each (~15 min on 2 cores)
    python -m mnist_lab.measure tuning --confirm-seeds 3      # and the winner against the defaults
    python -m mnist_lab.measure tuning --quick --output-dir results
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from mnist_lab.measure import results_table

PROG = "python -m mnist_lab.measure tuning"
QUICK = {"n_trials": 5, "max_train_samples": 2_000}
QUICK_RECIPE = "5 trials a study on 2 000 train digits"

TABLE = results_table.Table(
    name="tuning",
    title="A CNN study's speed, with Hyperband and without pruning",
    command=f"{PROG} --output-dir results",
    header=(
        "Two studies of tuning/cnn.yaml's space on a stratified subset of the training digits, "
        "one invocation at seed 0: the default pruner (Hyperband) for n trials, then no pruning "
        "for as many trials as fit in the first study's wall time. A row is one study (n = its "
        "trials); `best_val_accuracy` is one trial's, on the 5 000 validation digits (a single "
        "run: a few tenths between two studies' bests is a tie). `confirmation`, when the "
        "script ran with `--confirm-seeds K`, is `tune`'s own test of the winner against the "
        "defaults at K seeds (docs/comparisons.md). Whether a budget steers a study (the "
        "share of trials within it, with and without `--constraint`, over seeds) is on "
        "[constraints.md](constraints.md)."
    ),
    columns=(
        "study",
        "n",
        "train_digits",
        "wall_s",
        "pruned",
        "trials_per_min",
        "best_val_accuracy",
        "confirmation",
        "run_id",
    ),
    key=("study",),
    formats={"wall_s": "{:.0f}", "trials_per_min": "{:.2f}", "best_val_accuracy": "{:.4f}"},
    packages=("optuna",),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--max-train-samples", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--confirm-seeds",
        type=int,
        default=0,
        help="retrain the winner and the defaults at K seeds",
    )
    parser.add_argument("--skip-unpruned", action="store_true", help="only the pruned study")
    parser.add_argument("--output-dir", default=None, help="write tuning.md/.csv there")
    parser.add_argument("--quick", action="store_true", help=QUICK_RECIPE)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_trials, args.max_train_samples = QUICK["n_trials"], QUICK["max_train_samples"]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "mnist-lab-bench")

    from mnist_lab.engine.device import machine_name, resolve_device
    from mnist_lab.measure.hardware import hardware
    from mnist_lab.tuning.tuner import TuneOptions, tune

    device = resolve_device(args.device or "auto")
    print(f"hardware: {hardware(device)}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-tune-bench-"))
    data = {"max_train_samples": args.max_train_samples}
    if args.device:
        data["device"] = args.device

    def study(name: str, pruner: str, timeout: float | None) -> dict:
        options = TuneOptions(
            model="cnn",
            n_trials=args.n_trials,
            timeout=timeout,
            workers=args.workers,
            storage=f"sqlite:///{folder / f'{name}.db'}",
            study_name=f"bench-{name}-{stamp}",
            pruner=pruner,
            data=dict(data),
            retrain="full" if args.confirm_seeds and pruner != "none" else "none",
            confirm_seeds=args.confirm_seeds if pruner != "none" else 0,
        )
        result = tune(options)
        row = {
            "study": "Hyperband" if pruner != "none" else "no pruning, the same wall time",
            "n": result.trials_run,
            "train_digits": args.max_train_samples,
            "wall_s": result.seconds,
            "pruned": result.counts.get("PRUNED", 0),
            "trials_per_min": 60 * result.trials_run / result.seconds,
            "best_val_accuracy": result.best_value,
            "confirmation": result.confirmation,
            "run_id": result.parent_run_id,
        }
        print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        return row

    rows = [study("pruned", "hyperband", None)]
    if not args.skip_unpruned:
        rows.append(study("unpruned", "none", rows[0]["wall_s"]))
    if args.output_dir:
        recipe = QUICK_RECIPE if args.quick else results_table.FULL
        path = results_table.write(TABLE, rows, args.output_dir, machine_name(device), recipe)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
