"""Where a training step's time goes: `python -m mnist_lab.measure profile --config FILE`.

Runs `--steps` optimisation steps of the run the config describes, through the loop's own step
(`engine.loop.optimisation_step`: autocast, backward, clipping, the optimizer), under
`torch.profiler` after `--warmup` unprofiled ones, and prints the seconds a step, the images a
second, the achieved TFLOP/s, and the operators by self time. No MLflow run: a diagnostic.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mnist_lab import names
from mnist_lab.config import TrainConfig, load_config
from mnist_lab.engine.device import place_model, resolve_device, synchronize
from mnist_lab.engine.flops import train_flops_per_sample
from mnist_lab.engine.loop import (
    TrainState,
    make_optimizer,
    make_scheduler,
    optimisation_step,
    training_module,
)
from mnist_lab.errors import LabError
from mnist_lab.measure.hardware import hardware
from mnist_lab.models import build_model
from mnist_lab.train import load_splits, make_task

PROG = "python -m mnist_lab.measure profile"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a run config, e.g. experiments/vit.yaml")
    parser.add_argument("--model", default=None, help="else experiments/<model>.yaml")
    parser.add_argument("--steps", type=int, default=12, help="profiled steps (default 12)")
    parser.add_argument("--warmup", type=int, default=3, help="steps run first (default 3)")
    parser.add_argument("--rows", type=int, default=20, help="operators listed (default 20)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the config's")
    parser.add_argument("--device", default=None, help="override the config's device")
    parser.add_argument("--trace", default=None, help="also write a Chrome trace to this file")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rows < 1:
        parser.error("--steps and --rows must be >= 1, --warmup >= 0")
    if args.config is None and args.model is None:
        parser.error("give --config FILE or --model NAME")
    try:
        overrides = {"batch_size": args.batch_size, "device": args.device}
        config = load_config(args.model, overrides, args.config)
        print(profile_steps(config, args.steps, args.warmup, args.rows, args.trace))
    except LabError as err:
        parser.exit(2, f"{PROG}: error: {err}\n")
    return 0


def profile_steps(
    config: TrainConfig, steps: int, warmup: int, rows: int, trace: str | None = None
) -> str:
    """The report: a header of figures, then torch.profiler's table of the top `rows`
    operators by self time over `steps` steps that follow `warmup` unprofiled ones."""
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    splits = load_splits(config).to(device)
    model = place_model(build_model(config.model, **config.model_options), device)
    task = make_task(config)
    loader = task.loaders(splits)[0]
    if len(loader) < warmup + steps:
        raise LabError(
            f"the training split gives {len(loader)} batches of {config.batch_size}; "
            f"--warmup {warmup} + --steps {steps} need {warmup + steps}: ask for fewer steps"
        )
    optimizer = make_optimizer(model, config)
    state = TrainState(config, model, optimizer, make_scheduler(optimizer, config, len(loader)))
    loader.set_epoch(1)
    batches = list(itertools.islice(iter(loader), warmup + steps))
    flops = train_flops_per_sample(task, model, batches[0])
    step_module = training_module(task, model, config, device)
    model.train()
    for batch in batches[:warmup]:
        optimisation_step(state, task, step_module, batch, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        counts = [
            optimisation_step(state, task, step_module, b, device)[2] for b in batches[warmup:]
        ]
        synchronize(device)
    seconds = (time.perf_counter() - start) / steps  # profiled: a little above the real step
    if trace:
        prof.export_chrome_trace(trace)
    images = sum(counts) / steps  # a step's images (scenes for the detector)
    unit = "scene" if config.model == names.DETECTOR_MODEL else "image"
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    header = (
        f"{config.model} ({config.config_file}), batch {images:.0f}, {hardware(device)}\n"
        f"{seconds * 1000:.1f} ms a step under the profiler, {images / seconds:.0f} {unit}s/s, "
        f"{flops / 1e6:.1f} MFLOP per {unit} trained, "
        f"{flops * images / seconds / 1e12:.3f} TFLOP/s achieved"
    )
    return header + "\n" + prof.key_averages().table(sort_by=sort, row_limit=rows)
