"""Where a training step's time goes: `python -m mnist_lab.measure profile --config FILE`.

After `--warmup` steps, times `--steps` optimisation steps of the run the config describes,
through the loop's own step (`engine.loop.optimisation_step`: autocast, backward, clipping, the
optimizer), then runs them again under `torch.profiler`; prints the milliseconds a step, the
images a second and the achieved TFLOP/s (from the unprofiled pass), and the operators by self
time. Under a CUDA-graph compile mode the table shows graph replays, not the kernels inside
them. No MLflow run: a diagnostic.

`--compare-precision --model cnn vit …` times each model's step in fp32 and under bf16
autocast instead, alternating, and prints a Markdown table: what the CPU precision rule
(engine/device.py) is decided from. With `--output-dir results` a profile's row goes to
results/profiles.md and a precision comparison's to results/precision.md (with their CSVs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mnist_lab.config import TrainConfig, load_config
from mnist_lab.engine.device import (
    machine_name,
    place_model,
    precision,
    resolve_device,
    synchronize,
)
from mnist_lab.engine.flops import train_flops_per_sample
from mnist_lab.engine.loop import (
    TrainState,
    make_optimizer,
    make_scheduler,
    optimisation_step,
    training_module,
)
from mnist_lab.engine.tasks import Task
from mnist_lab.errors import EXIT_LAB_ERROR, LabError
from mnist_lab.measure import results_table
from mnist_lab.measure.hardware import hardware
from mnist_lab.models import is_detector
from mnist_lab.models.build import build_model
from mnist_lab.train import load_splits, make_task

PROG = "python -m mnist_lab.measure profile"
TOP_OPERATORS = 6  # the operators a profile's row names
PROFILE_TABLE = results_table.Table(
    name="profiles",
    title="Where a training step's time goes, by operator",
    command=f"{PROG} --config FILE --output-dir results",
    header=(
        "A run config's training steps through the engine's own step (autocast, backward, "
        "clipping, the optimizer), timed after warm-up steps (n: the steps timed), then rerun "
        "under `torch.profiler`: milliseconds a step, images (scenes) a second, the achieved "
        "TFLOP/s and the operators with the largest share of the self time. No MLflow run: a "
        "diagnostic. Shares count more than seconds where other work shared the cores."
    ),
    columns=("config", "batch", "precision", "n", "ms_per_step", "per_s", "tflops", "operators"),
    key=("config", "batch", "precision"),
    formats={"batch": "{:.0f}", "ms_per_step": "{:.1f}", "per_s": "{:.0f}", "tflops": "{:.3f}"},
)
PRECISION_TABLE = results_table.Table(
    name="precision",
    title="A training step in fp32 and under bf16 autocast",
    command=(
        f"{PROG} --compare-precision --model cnn vit alexnet vgg16 faster_rcnn --output-dir results"
    ),
    header=(
        "What the CPU precision rule (`CPU_PRECISION` in `mnist_lab/engine/device.py`) rests on: "
        "each model from its `experiments/<model>.yaml`, built and placed as the engine does, "
        "the engine's own step (forward, backward, AdamW), the two precisions alternating on the "
        "same model and batches n times; a cell is the fastest of the n timings, each the mean of "
        "`steps` steps. Read the ratio: it was measured side by side. Whether bf16 costs "
        "accuracy is a question for `compare` over seeds (docs/comparisons.md)."
    ),
    columns=(
        "model",
        "config",
        "batch",
        "n",
        "steps",
        "fp32_step_s",
        "bf16_step_s",
        "bf16_over_fp32",
    ),
    key=("model", "config", "batch"),
    formats={
        "batch": "{:.0f}",
        "fp32_step_s": "{:.4f}",
        "bf16_step_s": "{:.4f}",
        "bf16_over_fp32": "{:.2f}",
    },
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a run config, e.g. experiments/vit.yaml")
    parser.add_argument(
        "--model",
        nargs="+",
        default=None,
        help="else experiments/<model>.yaml (several with --compare-precision)",
    )
    parser.add_argument(
        "--compare-precision",
        action="store_true",
        help="instead of the operator table: each model's step in fp32 and in bf16 autocast, "
        "side by side, as a Markdown table",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="alternating timings of each precision (--compare-precision; default 2)",
    )
    parser.add_argument("--steps", type=int, default=12, help="profiled steps (default 12)")
    parser.add_argument(
        "--warmup", type=int, default=3, help="steps run first (default 3; compiling takes 3)"
    )
    parser.add_argument("--rows", type=int, default=20, help="operators listed (default 20)")
    parser.add_argument("--batch-size", type=int, default=None, help="override the config's")
    parser.add_argument("--device", default=None, help="override the config's device")
    parser.add_argument("--trace", default=None, help="also write a Chrome trace to this file")
    parser.add_argument(
        "--output-dir", default=None, help="write profiles.md (or precision.md) and its CSV there"
    )
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rows < 1 or args.repeats < 1:
        parser.error("--steps, --rows and --repeats must be >= 1, --warmup >= 0")
    if args.config is None and args.model is None:
        parser.error("give --config FILE or --model NAME")
    models = args.model or [None]
    if len(models) > 1 and not args.compare_precision:
        parser.error("--model takes one name, or several with --compare-precision")
    if args.trace and not Path(args.trace).resolve().parent.is_dir():
        parser.error(f"--trace {args.trace}: its folder does not exist; create it first")
    try:
        overrides = {"batch_size": args.batch_size, "device": args.device}
        configs = [load_config(model, overrides, args.config) for model in models]
        machine = machine_name(resolve_device(configs[0].device))
        if args.compare_precision:
            rows = []
            for line, row in compare_precision(configs, args.steps, args.warmup, args.repeats):
                print(line, flush=True)
                rows += [row] if row else []
            table = PRECISION_TABLE
        else:
            text, row = profile_steps(configs[0], args.steps, args.warmup, args.rows, args.trace)
            print(text)
            rows, table = [row], PROFILE_TABLE
    except LabError as err:
        parser.exit(EXIT_LAB_ERROR, f"{PROG}: error: {err}\n")
    if args.output_dir:
        print(f"wrote {results_table.write(table, rows, args.output_dir, machine)}")
    return 0


def profile_steps(
    config: TrainConfig, steps: int, warmup: int, rows: int, trace: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The report: a header of figures from `steps` timed steps after `warmup` ones, then
    torch.profiler's table of the top `rows` operators by self time over those steps rerun;
    and the same as a results row."""
    prepared = _prepare(config, steps, warmup)
    state, task, step_module, batches, device = prepared.steps
    for batch in batches[:warmup]:
        optimisation_step(state, task, step_module, batch, device)
    timed = _time_steps(state, task, step_module, batches[warmup:], device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:  # the same batches again, now recorded
        _time_steps(state, task, step_module, batches[warmup:], device)
    if trace:
        prof.export_chrome_trace(trace)
    seconds, images = timed
    flops = prepared.flops
    unit = "scene" if is_detector(config.model) else "image"
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    header = (
        f"{config.model} ({config.config_file}), batch {images:.0f}, {hardware(device)}\n"
        f"{seconds * 1000:.1f} ms a step, {images / seconds:.0f} {unit}s/s, "
        f"{flops / 1e6:.1f} MFLOP per {unit} trained, "
        f"{flops * images / seconds / 1e12:.3f} TFLOP/s achieved"
    )
    averages = prof.key_averages()
    row = {
        "config": Path(config.config_file or f"{config.model}.yaml").name,
        "batch": images,
        "precision": precision(device, config.amp),
        "n": steps,
        "ms_per_step": seconds * 1000,
        "per_s": images / seconds,
        "tflops": flops * images / seconds / 1e12,
        "operators": _top_operators(averages, sort),
    }
    return header + "\n" + averages.table(sort_by=sort, row_limit=rows), row


def _top_operators(averages: Any, sort: str) -> str:
    """`aten::convolution_backward 39 %, …`: the TOP_OPERATORS largest shares of self time."""
    key = "self_device_time_total" if sort.startswith("self_device") else "self_cpu_time_total"
    events = sorted(averages, key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1
    return ", ".join(
        f"{e.key} {100 * getattr(e, key) / total:.0f} %" for e in events[:TOP_OPERATORS]
    )


@dataclass
class Prepared:
    """A run's first `warmup + steps` batches and what steps them, ready to time."""

    steps: tuple[TrainState, Task, nn.Module, list[Any], torch.device]
    flops: float  # per image (scene) trained


def _prepare(config: TrainConfig, steps: int, warmup: int) -> Prepared:
    """The model, optimizer, schedule and batches of the run `config` describes, as the
    engine builds and places them."""
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
    return Prepared((state, task, step_module, batches, device), flops)


def compare_precision(
    configs: list[TrainConfig], steps: int, warmup: int, repeats: int
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """The lines of a Markdown table (each with its results row, None for the header's), a
    row as each config is timed: its training step (the
    engine's own: forward, backward, the optimizer) in fp32 and under bf16 autocast, whatever
    the precision rule says for this device, on the same model and batches. The two
    alternate `repeats` times after `warmup` steps of each; a cell is the fastest mean of
    `steps` steps."""
    device = resolve_device(configs[0].device)
    yield from (
        (line, None)
        for line in [
            f"hardware: {hardware(device)}; the rule's precision where amp is on: "
            f"{precision(device, enabled=True)}",
            f"n: the fastest of {repeats} alternating timings, each the mean of {steps} steps "
            f"after {warmup} warm-up steps in each precision",
            "",
            "| model (config) | batch | fp32 step | bf16 autocast step | bf16 / fp32 |",
            "|---|---|---|---|---|",
        ]
    )
    for config in configs:
        fp32_config = dataclasses.replace(config, amp=False)  # autocast only where asked below
        prepared = _prepare(fp32_config, steps, warmup)
        state, task, step_module, batches, _ = prepared.steps
        best = {"fp32": math.inf, "bf16": math.inf}
        casts = {
            "fp32": contextlib.nullcontext,
            "bf16": functools.partial(torch.autocast, device.type, dtype=torch.bfloat16),
        }
        for cast in casts.values():
            with cast():
                for batch in batches[:warmup]:
                    optimisation_step(state, task, step_module, batch, device)
        for _ in range(repeats):
            for name, cast in casts.items():
                with cast():
                    seconds, images = _time_steps(
                        state, task, step_module, batches[warmup:], device
                    )
                best[name] = min(best[name], seconds)
        line = (
            f"| {config.model} ({Path(config.config_file or '-').name}) | {images:.0f} | "
            f"{_ms(best['fp32'])} | {_ms(best['bf16'])} | {best['bf16'] / best['fp32']:.2f} |"
        )
        yield (
            line,
            {
                "model": config.model,
                "config": Path(config.config_file or "-").name,
                "batch": images,
                "n": repeats,
                "steps": steps,
                "fp32_step_s": best["fp32"],
                "bf16_step_s": best["bf16"],
                "bf16_over_fp32": best["bf16"] / best["fp32"],
            },
        )


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _time_steps(
    state: TrainState, task: Task, module: nn.Module, batches: list[Any], device: torch.device
) -> tuple[float, float]:
    """(seconds, images or scenes) a step, on average over `batches`."""
    synchronize(device)
    start = time.perf_counter()
    counts = [optimisation_step(state, task, module, batch, device)[2] for batch in batches]
    synchronize(device)
    return (time.perf_counter() - start) / len(batches), sum(counts) / len(batches)
