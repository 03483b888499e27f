"""`make measure` / `python -m mnist_lab.measure training`: train the scenarios, print figures.

Every figure printed is a metric of a real MLflow run (the runs land in the experiment
`mnist-lab-bench` unless MLFLOW_EXPERIMENT_NAME says otherwise), so results/' numbers can be
traced back to their runs. Speed targets are checked here, never by timed assertions in tests.
With `--output-dir results` the rows go to results/training.md and .csv (results_table.py).

    python -m mnist_lab.measure training                         # every scenario
    python -m mnist_lab.measure training cnn-1-epoch cnn         # some of them
    python -m mnist_lab.measure training --device cuda --output-dir results
    python -m mnist_lab.measure training --quick --output-dir results  # minutes, said so
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from mnist_lab import names
from mnist_lab.engine.device import amp_dtype, machine_name, precision, resolve_device
from mnist_lab.measure import results_table
from mnist_lab.measure.hardware import peak_tflops, start_bench
from mnist_lab.models import ARCHITECTURES

PROG = "python -m mnist_lab.measure training"

# What each model at its run config is held to; a model without one is trained all the same.
GOALS = {
    "cnn": ">= 99.4 %, make train in ~2 min, peak RSS <= 2 GB",
    "vit": ">= 98.5 % within 10 min of CPU training",
    "timm_vit": "cross-check of vit at the same settings",
    "vgg16": ">= 99.3 % (native 32 px)",
    "alexnet": ">= 99.3 % (native 32 px)",
    # Classification through detection on the 10 000 test digits, mAP on multi-digit scenes.
    "faster_rcnn": ">= 99.0 % (top box), test_map_50 >= 0.95",
}
# name → (model, overrides of experiments/<model>.yaml, what the issue asks of it): every
# architecture of the table at its run config, and these variations.
SCENARIOS: dict[str, tuple[str, dict[str, Any], str]] = {
    "cnn-1-epoch": (
        "cnn",
        {"epochs": 1},
        ">= 99.0 % test accuracy, train_time_s <= 15 on 2 CPU cores",
    ),
    **{name: (name, {}, GOALS.get(name, "")) for name in ARCHITECTURES},
    # CPU time per epoch of the 32-px VGG16/AlexNet, measured on a 5 500-image slice of an epoch.
    "vgg16-cpu-epoch": ("vgg16", {"epochs": 1, "max_train_samples": 5500}, "CPU s/epoch = x10"),
    "alexnet-cpu-epoch": ("alexnet", {"epochs": 1, "max_train_samples": 5500}, "CPU s/epoch = x10"),
    # Training on a tenth of the train split; the epoch time also holds the full val pass.
    "faster_rcnn-cpu-epoch": (
        "faster_rcnn",
        {"epochs": 1, "max_train_samples": 5500, "max_test_samples": 1000},
        "CPU s/epoch ~ x10 of the training part",
    ),
}
COLUMNS = (
    names.TEST_ACCURACY,
    names.TRAIN_TIME_S,
    "mean_epoch_time_s",
    names.INFERENCE_MS_PER_IMAGE,
    names.PEAK_MEMORY_MB,
    names.TRACKING_OVERHEAD,
    names.TEST_MAP_50,  # detector only
    names.TEST_MAP,
    names.TRAIN_FLOPS_PER_IMAGE,
    names.TRAIN_TFLOPS_PER_S,
)


# --quick: these scenarios, each shortened so the lot takes minutes on 2 CPU cores.
QUICK_SCENARIOS = ("cnn", "vit", "alexnet")
QUICK = {
    "epochs": 1,
    "max_train_samples": 5000,
    "max_test_samples": 2000,
    "robustness_samples": 100,
}
QUICK_RECIPE = "1 epoch, 5 000 train digits, 2 000 test digits, 100 digits a corruption"

TABLE = results_table.Table(
    name="training",
    title="Training scenarios: each model's run config, with the overrides a row names",
    command="python -m mnist_lab.measure training --output-dir results",
    header=(
        "Each row is one MLflow run at seed 0 (n = 1) of `experiments/<model>.yaml` with the "
        "scenario's overrides (`mnist_lab/measure/training.py`'s SCENARIOS), on the full MNIST "
        "splits unless the overrides cut them. The test accuracy's 95 % interval is Wilson's over "
        "the test digits (seed noise unmeasured: a second seed moves a run about as much again). "
        "`utilisation` is the run's `train_tflops_per_s` as a share of the dense-matmul peak this "
        "script times on the same machine in the run's dtype. Times are wall-clock seconds and "
        "mean nothing beyond their machine, nor when other work shared its cores."
    ),
    columns=(
        "scenario",
        "n",
        "overrides",
        "precision",
        names.TEST_ACCURACY,
        "test_accuracy_ci95_low",
        "test_accuracy_ci95_high",
        names.TRAIN_TIME_S,
        "mean_epoch_time_s",
        names.INFERENCE_MS_PER_IMAGE,
        names.PEAK_MEMORY_MB,
        names.TRACKING_OVERHEAD,
        "utilisation",
        "run_id",
    ),
    key=("scenario",),
    formats={
        names.TEST_ACCURACY: "{:.4f}",
        "test_accuracy_ci95_low": "{:.4f}",
        "test_accuracy_ci95_high": "{:.4f}",
        names.TRAIN_TIME_S: "{:.1f}",
        "mean_epoch_time_s": "{:.1f}",
        names.INFERENCE_MS_PER_IMAGE: "{:.3f}",
        names.PEAK_MEMORY_MB: "{:.0f}",
        names.TRACKING_OVERHEAD: "{:.3f}",
        "utilisation": "{:.2f}",
    },
)


def run_scenario(name: str, device: str | None, quick: bool = False) -> dict[str, Any]:
    from mnist_lab.analysis.statistics import wilson_interval
    from mnist_lab.config import load_config
    from mnist_lab.train import train

    model, overrides, target = SCENARIOS[name]
    overrides = {**overrides, **(QUICK if quick else {})}
    config = load_config(model, {**overrides, "device": device})
    result = train(config, tags={"bench_scenario": name})
    figures = {k: result.metrics[k] for k in COLUMNS if k in result.metrics}
    figures["mean_epoch_time_s"] = result.metrics[names.TRAIN_TIME_S] / result.epochs
    # The run's share of what this machine's dense matmuls reach in the run's dtype.
    device = resolve_device(config.device)
    dtype = amp_dtype(device, config.amp) or torch.float32
    figures["peak_tflops"] = peak_tflops(device, dtype)
    figures["utilisation"] = figures[names.TRAIN_TFLOPS_PER_S] / figures["peak_tflops"]
    figures["dtype"] = str(dtype).removeprefix("torch.")
    tested = config.max_test_samples or TEST_DIGITS
    low, high = wilson_interval(round(figures[names.TEST_ACCURACY] * tested), tested)
    return {
        "scenario": name,
        "model": model,
        "n": 1,
        "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none",
        "precision": precision(device, config.amp),
        "test_accuracy_ci95_low": low,
        "test_accuracy_ci95_high": high,
        "target": target,
        "run_id": result.run_id,
        **figures,
    }


TEST_DIGITS = 10_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "scenarios",
        nargs="*",
        default=list(SCENARIOS),
        metavar="SCENARIO",
        help=f"any of: {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--device", default=None, help="override the configs' device")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--output-dir", default=None, help="write training.md/.csv there")
    parser.add_argument(
        "--quick", action="store_true", help=f"{', '.join(QUICK_SCENARIOS)} at {QUICK_RECIPE}"
    )
    args = parser.parse_args(argv)
    if args.quick and args.scenarios == list(SCENARIOS):
        args.scenarios = list(QUICK_SCENARIOS)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    machine = start_bench(args.device)
    rows = []
    for name in args.scenarios:
        row = run_scenario(name, args.device, args.quick)
        rows.append(row)
        print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": machine, "rows": rows}, f, indent=2)
    if args.output_dir:
        recipe = QUICK_RECIPE if args.quick else results_table.FULL
        where = machine_name(resolve_device(args.device or "auto"))
        print(f"wrote {results_table.write(TABLE, rows, args.output_dir, where, recipe)}")
    return 0


def format_row(row: dict[str, Any]) -> str:
    acc = row.get(names.TEST_ACCURACY, float("nan"))
    detection = "".join(
        f"{key} {row[key]:.4f}  " for key in (names.TEST_MAP_50, names.TEST_MAP) if key in row
    )
    return (
        f"{row['scenario']:<18} test_accuracy {100 * acc:6.2f} %  {detection}"
        f"train_time_s {row.get(names.TRAIN_TIME_S, float('nan')):8.1f}  "
        f"s/epoch {row['mean_epoch_time_s']:7.1f}  "
        f"infer {row.get(names.INFERENCE_MS_PER_IMAGE, float('nan')):.3f} ms/img  "
        f"peak {row.get(names.PEAK_MEMORY_MB, float('nan')):7.0f} MB  "
        f"tracking {100 * row.get(names.TRACKING_OVERHEAD, 0):.1f} %  "
        f"{row[names.TRAIN_FLOPS_PER_IMAGE] / 1e6:.1f} MFLOP/img  "
        f"{row[names.TRAIN_TFLOPS_PER_S]:.3f} TFLOP/s = {100 * row['utilisation']:.1f} % of "
        f"{row['peak_tflops']:.2f} ({row['dtype']} matmul peak)  "
        f"[{row['target']}]  run {row['run_id']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
