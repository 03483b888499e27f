"""`python -m mnist_lab.measure tuning`: the tuning targets, measured and printed.

1. A 20-trial CNN study on a 10 000-image subset with the default pruner (Hyperband), its best
   configuration retrained on the full data and test-evaluated.
2. The same study without pruning on the same time budget (the first study's wall time).
3. The CNN defaults (experiments/cnn.yaml) trained once on the same machine, the baseline.

Each study gets a fresh storage and study name, and every figure is a metric of an MLflow run
(experiment `mnist-lab-bench` unless MLFLOW_EXPERIMENT_NAME says otherwise).

    python -m mnist_lab.measure tuning                     # everything (~15-20 min on 2 CPU cores)
    python -m mnist_lab.measure tuning --skip-baseline     # quote 99.53 % for the defaults
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from mnist_lab import names

PROG = "python -m mnist_lab.measure tuning"

TARGET_SECONDS = 600
# experiments/cnn.yaml's test accuracy, results/defaults.md (run 026beb5d…, 2-core Xeon, AMX bf16)
DEFAULTS_TEST_ACCURACY = 0.9953


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--max-train-samples", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--skip-baseline", action="store_true", help="quote 99.53 %% instead")
    parser.add_argument("--skip-unpruned", action="store_true", help="only the pruned study")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "mnist-lab-bench")

    from mnist_lab.engine.device import resolve_device
    from mnist_lab.measure.hardware import hardware
    from mnist_lab.tuning.tuner import TuneOptions, tune

    print(f"hardware: {hardware(resolve_device(args.device or 'auto'))}", flush=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-tune-bench-"))
    data = {"max_train_samples": args.max_train_samples}
    if args.device:
        data["device"] = args.device

    def study(name: str, pruner: str, timeout: float | None, retrain: str):
        options = TuneOptions(
            model="cnn",
            n_trials=args.n_trials,
            timeout=timeout,
            workers=args.workers,
            storage=f"sqlite:///{folder / f'{name}.db'}",
            study_name=f"bench-{name}-{stamp}",
            pruner=pruner,
            data=dict(data),
            retrain=retrain,
        )
        start = time.perf_counter()
        result = tune(options)
        return result, time.perf_counter() - start

    pruned, pruned_wall = study("pruned", "hyperband", None, "full")
    study_seconds = pruned.seconds  # trials only; the retrain is timed by its own run
    finished = sum(pruned.counts.values())
    print(
        f"pruned study   {finished} trials in {study_seconds:6.1f} s "
        f"(target <= {TARGET_SECONDS} s: {'met' if study_seconds <= TARGET_SECONDS else 'MISSED'})"
        f"  {pruned.counts}  pruned {pruned.counts['PRUNED'] / finished:.0%} "
        f"(target >= 33 %)  {60 * pruned.trials_run / study_seconds:.2f} trials/min  "
        f"best val_accuracy {pruned.best_value:.4f}  run {pruned.parent_run_id}",
        flush=True,
    )
    print(f"best config    {pruned.best_overrides}", flush=True)
    if not args.skip_unpruned:
        plain, _ = study("unpruned", "none", study_seconds, "none")
        print(
            f"no pruning     {plain.trials_run} trials in the same {study_seconds:.0f} s: "
            f"{60 * plain.trials_run / plain.seconds:.2f} trials/min  best val_accuracy "
            f"{plain.best_value:.4f}  run {plain.parent_run_id}",
            flush=True,
        )
    tuned = pruned.retrain_metrics.get(names.TEST_ACCURACY, float("nan"))
    baseline, source = DEFAULTS_TEST_ACCURACY, "results/defaults.md"
    if not args.skip_baseline:
        from mnist_lab.config import load_config
        from mnist_lab.train import train

        overrides = {"device": args.device} if args.device else {}
        run = train(load_config("cnn", overrides), tags={"bench_scenario": "cnn-defaults"})
        baseline, source = run.metrics[names.TEST_ACCURACY], f"run {run.run_id}"
    print(
        f"retrained best on full data: test_accuracy {100 * tuned:.2f} % "
        f"(run {pruned.retrain_run_id}) vs CNN defaults {100 * baseline:.2f} % ({source}): "
        f"{'beats' if tuned > baseline else 'does NOT beat'} the defaults; "
        f"tune wall time incl. retrain {pruned_wall:.0f} s",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
