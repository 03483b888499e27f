"""`python -m mnist_lab.measure time-to-accuracy`: MLPerf-style time to the lab's accuracy.

Each architecture trains until its validation accuracy reaches what the lab reported for it,
checked `val_checks_per_epoch` times an epoch; the figure is the training's wall time up to that
check (its validation passes included), with the epochs it took and the test accuracy of the
model at that point, beside the time the lab needed on its T4 GPU. Each is a real MLflow run
(experiment `mnist-lab-bench`), with `time_to_target_s` and `epochs_to_target` among its metrics.

In the same invocation the peer recipe (measure/peer.py) and `experiments/cnn_fast.yaml` train
one after the other on the same cores, so the CNN's speed is a ratio measured side by side:

    python -m mnist_lab.measure time-to-accuracy                      # the peer, then every model
    python -m mnist_lab.measure time-to-accuracy --models cnn vgg16   # some of them
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from mnist_lab import names, tracking
from mnist_lab.engine.device import amp_dtype, resolve_device
from mnist_lab.measure.hardware import hardware, peak_tflops
from mnist_lab.measure.peer import SETTINGS as PEER_SETTINGS
from mnist_lab.measure.peer import train_peer

PROG = "python -m mnist_lab.measure time-to-accuracy"


@dataclass(frozen=True)
class Target:
    """The lab's validation accuracy for a model and the seconds its T4 GPU took to get there;
    the run config this bench trains to it with (a preset, and overrides of it)."""

    val_accuracy: float
    lab_t4_s: float
    config: str | None = None  # None: experiments/<model>.yaml
    overrides: dict[str, Any] = field(default_factory=dict)


TARGETS: dict[str, Target] = {
    "cnn": Target(0.9876, 45, "experiments/cnn_fast.yaml", {"val_checks_per_epoch": 4}),
    "vgg16": Target(0.9921, 188, "experiments/vgg16_fast.yaml", {"val_checks_per_epoch": 4}),
    "alexnet": Target(0.9894, 156, "experiments/alexnet_fast.yaml", {"val_checks_per_epoch": 4}),
    "vit": Target(0.9852, 204, "experiments/vit_fast.yaml", {"val_checks_per_epoch": 2}),
    "faster_rcnn": Target(0.9783, 112, None, {"val_checks_per_epoch": 2}),
}
# Every model's run skips the corruption suite: it is not part of the time to accuracy, and
# the test report runs after the clock stops anyway.
COMMON = {"robustness_samples": 0}


def measure_model(model: str, device: str | None) -> dict[str, Any]:
    from mnist_lab.config import load_config
    from mnist_lab.train import train

    target = TARGETS[model]
    overrides = {
        **COMMON,
        **target.overrides,
        "target_val_accuracy": target.val_accuracy,
        "device": device,
    }
    config = load_config(model, overrides, target.config)
    result = train(config, tags={"bench_scenario": f"time-to-accuracy/{model}"})
    metrics = result.metrics
    run_device = resolve_device(config.device)
    peak = peak_tflops(run_device, amp_dtype(run_device, config.amp) or torch.float32)
    return {
        "model": model,
        "config": config.config_file,
        "target": target.val_accuracy,
        "lab_t4_s": target.lab_t4_s,
        "reached": names.TIME_TO_TARGET_S in metrics,
        "time_to_target_s": metrics.get(names.TIME_TO_TARGET_S, float("nan")),
        "epochs_to_target": metrics.get(names.EPOCHS_TO_TARGET, float("nan")),
        "best_val_accuracy": metrics[names.BEST_VAL_ACCURACY],
        "test_accuracy": metrics[names.TEST_ACCURACY],
        "train_time_s": metrics[names.TRAIN_TIME_S],
        "utilisation": metrics[names.TRAIN_TFLOPS_PER_S] / peak,
        "run_id": result.run_id,
    }


def measure_peer(device: str | None) -> dict[str, Any]:
    """The peer recipe, then `cnn_fast` at its own settings (one full epoch, no target)."""
    from mnist_lab.config import load_config
    from mnist_lab.data.mnist import load_mnist, make_splits
    from mnist_lab.train import train

    config = load_config(None, {**COMMON, "device": device}, "experiments/cnn_fast.yaml")
    splits = make_splits(
        load_mnist(config.data_dir),
        val_size=config.val_size,
        seed=config.seed,
        max_train_samples=config.max_train_samples,
        max_test_samples=config.max_test_samples,
    )  # the images cnn_fast trains and is tested on
    run_device = resolve_device(config.device)
    peer = train_peer(splits.to(run_device), seed=config.seed)
    with tracking.run(run_name="peer-99-in-1s", tags={"bench_scenario": "peer"}):
        tracking.log_params({**PEER_SETTINGS, "model": "peer", "seed": config.seed})
        tracking.log_metrics(
            {names.TEST_ACCURACY: peer.test_accuracy, names.TRAIN_TIME_S: peer.train_time_s}
        )
        peer_run = tracking.active_run_id()
    ours = train(config, tags={"bench_scenario": "cnn_fast-vs-peer"})
    return {
        "peer_s": peer.train_time_s,
        "peer_test_accuracy": peer.test_accuracy,
        "peer_run_id": peer_run,
        "cnn_fast_s": ours.metrics[names.TRAIN_TIME_S],
        "cnn_fast_test_accuracy": ours.metrics[names.TEST_ACCURACY],
        "cnn_fast_run_id": ours.run_id,
        "ratio": ours.metrics[names.TRAIN_TIME_S] / peer.train_time_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="*",
        default=list(TARGETS),
        metavar="MODEL",
        help=f"any of: {', '.join(TARGETS)} (default: all)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the peer and cnn_fast pair")
    parser.add_argument("--device", default=None, help="override the configs' device")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in TARGETS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(TARGETS)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "mnist-lab-bench")

    machine = hardware(resolve_device(args.device or "auto"))
    print(f"hardware: {machine}", flush=True)
    figures: dict[str, Any] = {"hardware": machine, "models": []}
    if not args.no_peer:
        pair = figures["peer"] = measure_peer(args.device)
        print(format_peer(pair), flush=True)
    for model in args.models:
        row = measure_model(model, args.device)
        figures["models"].append(row)
        print(format_row(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def format_peer(pair: dict[str, Any]) -> str:
    return (
        f"peer (in-memory 99 % recipe)  test {100 * pair['peer_test_accuracy']:.2f} %  "
        f"{pair['peer_s']:.1f} s  run {pair['peer_run_id']}\n"
        f"cnn_fast                      test {100 * pair['cnn_fast_test_accuracy']:.2f} %  "
        f"{pair['cnn_fast_s']:.1f} s = {pair['ratio']:.2f}x the peer's time  "
        f"run {pair['cnn_fast_run_id']}"
    )


def format_row(row: dict[str, Any]) -> str:
    if row["reached"]:
        reached = (
            f"{row['time_to_target_s']:7.1f} s  ({row['time_to_target_s'] / row['lab_t4_s']:.2f}x "
            f"the lab's T4 {row['lab_t4_s']:.0f} s)  {row['epochs_to_target']:.2f} epochs"
        )
    else:
        reached = (
            f"NOT REACHED in {row['train_time_s']:.1f} s (best val "
            f"{100 * row['best_val_accuracy']:.2f} %; the lab's T4: {row['lab_t4_s']:.0f} s)"
        )
    return (
        f"{row['model']:<12} val >= {100 * row['target']:.2f} %: {reached}  "
        f"test {100 * row['test_accuracy']:.2f} %  {100 * row['utilisation']:.0f} % of peak  "
        f"[{row['config']}]  run {row['run_id']}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
