"""`python -m mnist_lab.measure time-to-accuracy`: MLPerf-style time to the lab's accuracy.

Each architecture trains until its validation accuracy reaches a reference figure for it,
checked `val_checks_per_epoch` times an epoch; the figure is the training's wall time up to that
check (its validation passes included), with the epochs it took and the test accuracy of the
model at that point, beside the reference's time on a T4 GPU. Each is a real MLflow run
(experiment `mnist-lab-bench`), with `time_to_target_s` and `epochs_to_target` among its metrics.

In the same invocation the peer recipe (measure/reference_recipe.py) and
`experiments/cnn_fast.yaml` train one after the other on the same cores, so the CNN's speed is
a ratio measured side by side:

    python -m mnist_lab.measure time-to-accuracy                      # the peer, then every model
    python -m mnist_lab.measure time-to-accuracy --models cnn vgg16   # some of them
    python -m mnist_lab.measure time-to-accuracy --quick --output-dir results

The targets and the T4's seconds are reference figures, not the lab's measurements:
measure/data/t4_reference.csv holds them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mnist_lab import names, tracking
from mnist_lab.engine.device import amp_dtype, machine_name, resolve_device
from mnist_lab.measure import results_table
from mnist_lab.measure.hardware import peak_tflops, start_bench
from mnist_lab.measure.reference_recipe import SETTINGS as PEER_SETTINGS
from mnist_lab.measure.reference_recipe import train_peer

if TYPE_CHECKING:
    from mnist_lab.config import TrainConfig
    from mnist_lab.data.mnist import Splits

PROG = "python -m mnist_lab.measure time-to-accuracy"


@dataclass(frozen=True)
class Target:
    """The lab's validation accuracy for a model and the seconds its T4 GPU took to get there;
    the run config this bench trains to it with (a preset, and overrides of it)."""

    val_accuracy: float
    lab_t4_s: float
    config: str | None = None  # None: experiments/<model>.yaml
    overrides: dict[str, Any] = field(default_factory=dict)


def _reference() -> dict[str, tuple[float, float]]:
    """model → (validation accuracy, T4 seconds): the reference figures each model races."""
    path = Path(__file__).parent / "data" / "t4_reference.csv"
    with path.open(newline="") as f:
        return {
            r["model"]: (float(r["val_accuracy"]), float(r["t4_seconds"]))
            for r in csv.DictReader(f)
        }


REFERENCE = _reference()
# model → the run config it races with, and overrides of it.
RECIPES: dict[str, tuple[str | None, dict[str, Any]]] = {
    "cnn": ("experiments/cnn_fast.yaml", {"val_checks_per_epoch": 4}),
    "vgg16": ("experiments/vgg16_fast.yaml", {"val_checks_per_epoch": 4}),
    "alexnet": ("experiments/alexnet_fast.yaml", {"val_checks_per_epoch": 4}),
    "vit": (None, {"val_checks_per_epoch": 2}),  # vit.yaml: augmentation pays
    "faster_rcnn": ("experiments/faster_rcnn_fast.yaml", {}),
}
TARGETS: dict[str, Target] = {
    model: Target(*REFERENCE[model], config, overrides)
    for model, (config, overrides) in RECIPES.items()
}
TABLE = results_table.Table(
    name="time-to-accuracy",
    title="Time to accuracy: each model's preset timed to a reference validation accuracy",
    command=f"{PROG} --output-dir results",
    header=(
        "Each model trains from its run config (`config`), in each `precision`, at n seeds "
        "(0 … n − 1, the precisions alternating seed by seed on the same cores). Its validation "
        "accuracy is checked at evenly spaced points of each epoch; `time_to_target_s` is the "
        "mean wall time to the first check that reached the reference's `target` (validation "
        "passes included, as MLPerf counts them) with its 95 % t interval over seeds, blank "
        "unless every seed reached it (`reached`), beside the reference's seconds on a T4 GPU "
        "(`t4_s`, from `mnist_lab/measure/data/t4_reference.csv`, not measured here; `of_t4` the "
        "ratio). Training then goes on to the end of the preset's schedule, so `test_accuracy` "
        "(mean [95 % t interval]) is the two precisions' accuracy at the same settings; "
        "`bf16_vs_fp32` is bf16's test accuracy minus fp32's, Welch's interval and p over seeds "
        "(a tie inside the noise). `utilisation`: the share of this machine's dense-matmul peak "
        "in the run's dtype. A model whose config sets `amp: false` trains in fp32 only."
    ),
    columns=(
        "model",
        "config",
        "precision",
        "n",
        "target",
        "reached",
        "time_to_target_s",
        "interval_s",
        "t4_s",
        "of_t4",
        "epochs_to_target",
        "test_accuracy",
        "bf16_vs_fp32",
        "utilisation",
        "run_ids",
    ),
    key=("model", "precision"),
    formats={
        "target": "{:.4f}",
        "time_to_target_s": "{:.1f}",
        "t4_s": "{:.0f}",
        "of_t4": "{:.2f}",
        "epochs_to_target": "{:.2f}",
        "utilisation": "{:.2f}",
    },
)
PEER_TABLE = results_table.Table(
    name="time-to-accuracy-peer",
    title="`cnn_fast` beside the reference recipe, alternating on the same cores",
    command=f"{PROG} --output-dir results",
    header=(
        "The reference recipe (`mnist_lab/measure/reference_recipe.py`: two convs, one epoch of "
        "the 55 000 training digits, batch 256, no validation) in its variants, and "
        "`experiments/cnn_fast.yaml` (its validation pass included), alternating n times in one "
        "invocation: the median run's seconds and test accuracy, every run's seconds, and "
        "`cnn_fast`'s median time as a fraction of each variant's. Single runs on a virtual "
        "machine scatter: read the ratio, measured side by side."
    ),
    columns=(
        "recipe_variant",
        "n",
        "median_s",
        "test_accuracy",
        "all_s",
        "cnn_fast_ratio",
        "cnn_fast_versus",
        "run_id",
    ),
    key=("recipe_variant",),
    formats={"median_s": "{:.1f}", "test_accuracy": "{:.4f}", "cnn_fast_ratio": "{:.2f}"},
)
QUICK_MODELS = ("cnn",)  # --quick: the CNN's race and the pair once (rows as the full recipe's)

# Every model's run skips the corruption suite: it is not part of the time to accuracy, and
# the test report runs after the clock stops anyway.
COMMON = {"robustness_samples": 0}


def measure_model(model: str, device: str | None, seed: int, precision: str) -> dict[str, Any]:
    """One run of `model`'s preset at `seed` in `precision` ("fp32", or "bf16": the preset's
    `amp`), timed to its target and trained to the end of its schedule."""
    from mnist_lab.config import load_config
    from mnist_lab.train import train

    target = TARGETS[model]
    overrides = {
        **COMMON,
        **target.overrides,
        "target_val_accuracy": target.val_accuracy,
        "stop_at_target": False,
        "device": device,
        "seed": seed,
    }
    if precision == "fp32":
        overrides["amp"] = False
    config = load_config(model, overrides, target.config)
    result = train(config, tags={"bench_scenario": f"time-to-accuracy/{model}/{precision}"})
    metrics = result.metrics
    run_device = resolve_device(config.device)
    peak = peak_tflops(run_device, amp_dtype(run_device, config.amp) or torch.float32)
    return {
        "model": model,
        "config": Path(config.config_file).name if config.config_file else f"{model}.yaml",
        "precision": precision,
        "seed": seed,
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


def precisions(model: str, device: torch.device, asked: list[str] | None) -> list[str]:
    """The precisions `model` races in: those asked for, else fp32 and, where its preset's
    `amp` means bf16 on `device` (the CPU precision rule), bf16. A preset with `amp: false`
    (Faster R-CNN: bf16 gave a NaN loss) races in fp32 only."""
    from mnist_lab.config import load_config

    target = TARGETS[model]
    config = load_config(model, dict(target.overrides), target.config)
    bf16 = amp_dtype(device, config.amp) == torch.bfloat16
    return [p for p in (asked or PRECISIONS) if p == "fp32" or bf16]


PRECISIONS = ("fp32", "bf16")


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per (model, precision) over its seeds' runs, bf16's beside its fp32 runs."""
    from mnist_lab.analysis.statistics import ALPHA, t_interval, welch

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["model"], run["precision"]), []).append(run)
    rows = []
    for (model, precision), group in groups.items():
        first = group[0]
        reached = [r for r in group if r["reached"]]
        times = [r["time_to_target_s"] for r in reached]
        accuracies = [r["test_accuracy"] for r in group]
        every = len(reached) == len(group)
        mean_s = sum(times) / len(times) if every else float("nan")
        low, high = t_interval(times) if every else (float("nan"), float("nan"))
        acc_low, acc_high = t_interval(accuracies)
        row = {
            "model": model,
            "config": first["config"],
            "precision": precision,
            "n": len(group),
            "target": first["target"],
            "reached": f"{len(reached)} of {len(group)}",
            "time_to_target_s": mean_s,
            "interval_s": _interval(low, high, "{:.1f}"),
            "t4_s": first["lab_t4_s"],
            "of_t4": mean_s / first["lab_t4_s"],
            "epochs_to_target": (
                sum(r["epochs_to_target"] for r in reached) / len(reached) if every else math.nan
            ),
            "test_accuracy": f"{_pct(sum(accuracies) / len(accuracies))} "
            + _interval(100 * acc_low, 100 * acc_high, "{:.2f}"),
            "bf16_vs_fp32": "",
            "utilisation": sum(r["utilisation"] for r in group) / len(group),
            "run_ids": " ".join(r["run_id"][:8] for r in group),
            "best_val_accuracy": max(r["best_val_accuracy"] for r in group),
        }
        fp32 = groups.get((model, "fp32"))
        if precision == "bf16" and fp32 and max(len(group), len(fp32)) >= 2:
            d = welch(accuracies, [r["test_accuracy"] for r in fp32])
            tie = (
                "tie"
                if not d.p_value < ALPHA
                else ("bf16 worse" if d.difference < 0 else "bf16 better")
            )
            row["bf16_vs_fp32"] = (
                f"{100 * d.difference:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}], "
                f"p {d.p_value:.2g}: {tie}"
            )
        rows.append(row)
    return rows


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _interval(low: float, high: float, fmt: str) -> str:
    if math.isnan(low):
        return ""
    return f"[{fmt.format(low)}, {fmt.format(high)}]"


# The peer's variants, as train_peer's keyword arguments, in the order they print.
PEER_VARIANTS: dict[str, dict[str, bool]] = {
    "peer": {},  # as published: fp32, NCHW
    "peer_channels_last": {"channels_last": True},
    "peer_bf16": {"channels_last": True, "amp": True},
}
TITLES = {
    "peer": "reference recipe, as published (NCHW)",
    "peer_channels_last": "reference recipe, channels-last",
    "peer_bf16": "reference recipe, channels-last, bf16",
    "cnn_fast": "cnn_fast",
}


def peer_variants(device: torch.device) -> list[str]:
    """Every variant, but the bf16 one only where `amp` means bf16 (CUDA, AMX CPUs): elsewhere
    it would train the channels-last variant a second time."""
    return [
        name
        for name, options in PEER_VARIANTS.items()
        if not options.get("amp") or amp_dtype(device, enabled=True) is not None
    ]


def measure_peer(device: str | None, repeats: int) -> dict[str, Any]:
    """The peer recipe in its variants (`peer_variants`) and `cnn_fast` at its own settings (its
    preset's schedule, no target), alternating `repeats` times, at seeds 0 … repeats − 1 (each
    repeat's seed shared by every side): medians, every run's figures, and cnn_fast's time as a
    fraction of each variant's, with the lab's test of it (`versus`). Each variant first trains
    once on a slice, untimed, so neither side pays oneDNN's first-call setup alone (cnn_fast's
    first run pays its own)."""
    from mnist_lab.config import load_config
    from mnist_lab.train import train

    config = load_config(None, {**COMMON, "device": device}, "experiments/cnn_fast.yaml")
    splits = peer_splits(config)
    variants = peer_variants(splits.train_x.device)
    warm_up = replace(splits, train_x=splits.train_x[:2560], train_y=splits.train_y[:2560])
    for name in variants:
        train_peer(warm_up, **PEER_VARIANTS[name])
    runs: dict[str, list[tuple[float, float, str]]] = {name: [] for name in (*variants, "cnn_fast")}
    for seed in range(repeats):
        config = replace(config, seed=seed)
        for name in variants:
            peer = train_peer(splits, seed=seed, **PEER_VARIANTS[name])
            with tracking.run(run_name=f"{name}-99-in-1s", tags={"bench_scenario": name}):
                tracking.log_params(
                    {**PEER_SETTINGS, **PEER_VARIANTS[name], "model": name, "seed": config.seed}
                )
                tracking.log_metrics(
                    {names.TEST_ACCURACY: peer.test_accuracy, names.TRAIN_TIME_S: peer.train_time_s}
                )
                runs[name].append((peer.train_time_s, peer.test_accuracy, tracking.active_run_id()))
        ours = train(config, tags={"bench_scenario": "cnn_fast-vs-peer"})
        metrics = ours.metrics
        runs["cnn_fast"].append(
            (metrics[names.TRAIN_TIME_S], metrics[names.TEST_ACCURACY], ours.run_id)
        )
    pair: dict[str, Any] = {name: _median_run(results) for name, results in runs.items()}
    ours_s = pair["cnn_fast"]["seconds"]
    pair["ratios"] = {name: ours_s / pair[name]["seconds"] for name in variants}
    pair["ratio"] = pair["ratios"]["peer"]  # the target's ratio: to the peer as published
    if repeats >= 2:
        pair["versus"] = {name: versus(runs["cnn_fast"], runs[name]) for name in variants}
    return pair


def versus(ours: list[tuple[float, float, str]], peer: list[tuple[float, float, str]]) -> str:
    """cnn_fast against a peer variant over their seeds, in the lab's words: the ratio of their
    times (Welch on log seconds, so the interval is of the ratio of geometric means) and the
    difference of their test accuracies (Welch), each a tie where its interval holds 1 or 0."""
    from mnist_lab.analysis.statistics import welch

    time = welch([math.log(r[0]) for r in ours], [math.log(r[0]) for r in peer])
    accuracy = welch([r[1] for r in ours], [r[1] for r in peer])
    return (
        f"time {math.exp(time.difference):.2f}x [{math.exp(time.low):.2f}, "
        f"{math.exp(time.high):.2f}], p {time.p_value:.2g}; test accuracy "
        f"{100 * accuracy.difference:+.2f} [{100 * accuracy.low:+.2f}, {100 * accuracy.high:+.2f}]"
        f", p {accuracy.p_value:.2g}{'' if accuracy.p_value < 0.05 else ' (tie)'}"
    )


def peer_splits(cnn_fast: TrainConfig) -> Splits:
    """The peer's images, on the device before its clock starts: `cnn_fast`'s validation and
    test splits, but the whole train split rather than the preset's `max_train_samples` subset
    (the peer's recipe is one full epoch); the bench's common settings still apply."""
    from mnist_lab.train import load_splits

    whole = replace(cnn_fast, max_train_samples=COMMON.get("max_train_samples"))
    return load_splits(whole).to(resolve_device(cnn_fast.device))


def _median_run(results: list[tuple[float, float, str]]) -> dict[str, Any]:
    """The median run by time (the lower middle one of an even count), and every run's time."""
    ordered = sorted(results)
    seconds, accuracy, run_id = ordered[(len(ordered) - 1) // 2]
    return {
        "seconds": seconds,
        "test_accuracy": accuracy,
        "run_id": run_id,
        "all_seconds": [r[0] for r in results],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="*",
        default=list(TARGETS),
        metavar="MODEL",
        help=f"any of: {', '.join(TARGETS)} (default: all)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the peer and cnn_fast pair")
    parser.add_argument(
        "--repeats", type=int, default=3, help="peer / cnn_fast trainings each (default 3)"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="runs of each model in each precision (default 3)"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=PRECISIONS,
        default=None,
        help="default: fp32, and bf16 where a preset's amp means bf16 on this device",
    )
    parser.add_argument("--device", default=None, help="override the configs' device")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--output-dir", default=None, help="write time-to-accuracy*.md/.csv there")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="only the CNN, one seed, and the pair once (--repeats 1 --seeds 1)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.repeats, args.seeds = list(QUICK_MODELS), 1, 1
    if args.seeds < 1 or args.repeats < 1:
        parser.error("--seeds and --repeats must be at least 1")
    unknown = [m for m in args.models if m not in TARGETS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(TARGETS)}")
    machine = start_bench(args.device)
    device = resolve_device(args.device or "auto")
    figures: dict[str, Any] = {"hardware": machine, "runs": []}
    if not args.no_peer:
        pair = figures["peer"] = measure_peer(args.device, args.repeats)
        print(format_peer(pair), flush=True)
    for model in args.models:
        for seed in range(args.seeds):  # the precisions alternate seed by seed
            for precision in precisions(model, device, args.precisions):
                run = measure_model(model, args.device, seed, precision)
                figures["runs"].append(run)
                print(format_run(run), flush=True)
    figures["models"] = summarize(figures["runs"])
    print("\n".join(format_row(row) for row in figures["models"]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    if args.output_dir:
        name = machine_name(device)
        print(f"wrote {results_table.write(TABLE, figures['models'], args.output_dir, name)}")
        if "peer" in figures:
            rows = peer_rows(figures["peer"])
            print(f"wrote {results_table.write(PEER_TABLE, rows, args.output_dir, name)}")
    return 0


def peer_rows(pair: dict[str, Any]) -> list[dict[str, Any]]:
    """The pair's figures, a row per peer variant and one for cnn_fast."""
    return [
        {
            "recipe_variant": TITLES[name],
            "n": len(pair[name]["all_seconds"]),
            "median_s": pair[name]["seconds"],
            "test_accuracy": pair[name]["test_accuracy"],
            "all_s": ", ".join(f"{s:.1f}" for s in pair[name]["all_seconds"]),
            "cnn_fast_ratio": pair["ratios"].get(name, float("nan")),
            "cnn_fast_versus": pair.get("versus", {}).get(name, ""),
            "run_id": pair[name]["run_id"],
        }
        for name in (*pair["ratios"], "cnn_fast")
    ]


def format_peer(pair: dict[str, Any]) -> str:
    """A line for each peer variant and cnn_fast, then the target's ratio."""
    lines = []
    for name in (*pair["ratios"], "cnn_fast"):
        row = pair[name]
        each = ", ".join(f"{s:.1f}" for s in row["all_seconds"])
        ratio = f"cnn_fast {pair['ratios'][name]:.2f}x" if name in pair["ratios"] else ""
        lines.append(
            f"{TITLES[name]:<26} test {100 * row['test_accuracy']:.2f} %  "
            f"median {row['seconds']:5.1f} s (runs: {each})  {ratio:<15} run {row['run_id']}"
        )
    lines.append(f"cnn_fast / the published peer: {pair['ratio']:.2f}x its time (target <= 0.35x)")
    for name, words in pair.get("versus", {}).items():
        lines.append(f"cnn_fast against {TITLES[name]}: {words}")
    return "\n".join(lines)


def format_run(run: dict[str, Any]) -> str:
    """One run's line: its time to the target (or how close it came) and its test accuracy."""
    if run["reached"]:
        reached = (
            f"{run['time_to_target_s']:7.1f} s  ({run['time_to_target_s'] / run['lab_t4_s']:.2f}x "
            f"the reference's T4 {run['lab_t4_s']:.0f} s)  {run['epochs_to_target']:.2f} epochs"
        )
    else:
        reached = (
            f"NOT REACHED (best val {100 * run['best_val_accuracy']:.2f} %; the reference's T4: "
            f"{run['lab_t4_s']:.0f} s)"
        )
    return (
        f"{run['model']:<12} {run['precision']} seed {run['seed']}  val >= "
        f"{100 * run['target']:.2f} %: {reached}  test {100 * run['test_accuracy']:.2f} % after "
        f"{run['train_time_s']:.1f} s  {100 * run['utilisation']:.0f} % of peak  "
        f"[{run['config']}]  run {run['run_id']}"
    )


def format_row(row: dict[str, Any]) -> str:
    """A (model, precision) row over its seeds."""
    if math.isnan(row["time_to_target_s"]):
        time = (
            f"reached by {row['reached']} seeds (best val {100 * row['best_val_accuracy']:.2f} %)"
        )
    else:
        time = f"{row['time_to_target_s']:.1f} s {row['interval_s']} = {row['of_t4']:.2f}x the T4"
    versus = f"  bf16 - fp32: {row['bf16_vs_fp32']}" if row["bf16_vs_fp32"] else ""
    return (
        f"{row['model']:<12} {row['precision']} n {row['n']}: {time}  "
        f"test {row['test_accuracy']}{versus}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
