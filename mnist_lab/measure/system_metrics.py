"""`python -m mnist_lab.measure system-metrics`: what MLflow's system metrics cost a run.

Trains `experiments/cnn_fast.yaml` with `system_metrics` on and off, alternating on, off, off,
on, on, off, … (each pair reversed from the last, so a drift of the machine's speed hits both
arms alike), `--repeats` runs an arm, after one untimed warm-up run (so the first arm does not
pay oneDNN's first-call setup alone). The runs land in the experiment `mnist-lab-bench` unless
MLFLOW_EXPERIMENT_NAME says otherwise. Prints each arm's mean `train_time_s` with its 95 % t
interval, and on − off with Welch's interval and test; `--output-dir` writes
system-metrics.md and .csv there (results_table.py).

    python -m mnist_lab.measure system-metrics --output-dir results          # ~5 min
    python -m mnist_lab.measure system-metrics --quick --output-dir results  # ~3 min, said so
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from mnist_lab import names
from mnist_lab.engine.contention import ALONE_BELOW
from mnist_lab.engine.device import machine_name, resolve_device
from mnist_lab.measure import results_table
from mnist_lab.measure.hardware import start_bench

PROG = "python -m mnist_lab.measure system-metrics"
CONFIG = "experiments/cnn_fast.yaml"
ON, OFF, DIFFERENCE = "on", "off", "on − off"
# A metric every `system_metrics` run logs each sample: its history counts the samples.
SAMPLED = "system/cpu_utilization_percentage"

QUICK = {"max_train_samples": 5000, "max_test_samples": 2000, "robustness_samples": 100}
QUICK_RECIPE = "5 000 train digits, 2 000 test digits, 100 digits a corruption"
WARM_UP = {"max_train_samples": 2560, "max_test_samples": 1000, "robustness_samples": 0}

TABLE = results_table.Table(
    name="system-metrics",
    title="What MLflow's system metrics cost a `cnn_fast` run",
    command=f"{PROG} --output-dir results",
    header=(
        "`experiments/cnn_fast.yaml` trained with `system_metrics` on and off "
        "([docs/training.md](../docs/training.md#system-metrics)), alternating on, off, off, on, "
        "on, off, … in one invocation after an untimed warm-up run, so a drift of the machine "
        "hits both arms alike (`mnist_lab/measure/system_metrics.py`). Each arm's row: n runs, "
        "mean `train_time_s` with its 95 % Student t interval, mean epoch time, mean wall-clock "
        "seconds of the whole run (`run_wall_s`: start to end, the test report and logging "
        "included, where the monitor's thread starts and stops), the system-metric samples each "
        "run logged (`system/cpu_utilization_percentage`'s history, one every 10 s) and each "
        "run's `other_cpu_share` tag (the share of its CPUs' time other processes used while it "
        f"trained; `alone`: runs below {ALONE_BELOW:.2f}). The `on − off` row: the difference "
        "of the means, with Welch's 95 % interval and two-sided p-value for `train_time_s` "
        "(`run_wall_s`: the difference of the means only), and the verdict: a difference "
        "inside the noise (p ≥ 0.05) is a tie. Times are wall-clock seconds on the machine "
        "named; where runs shared their cores, the seconds are contended and only the "
        "side-by-side difference means anything."
    ),
    columns=(
        "arm",
        "n",
        names.TRAIN_TIME_S,
        "ci95_low",
        "ci95_high",
        "mean_epoch_time_s",
        "run_wall_s",
        "all_train_time_s",
        "system_samples",
        names.TAG_OTHER_CPU_SHARE,
        "alone",
        "p_value",
        "verdict",
        "run_ids",
    ),
    key=("arm",),
    formats={
        names.TRAIN_TIME_S: "{:.2f}",
        "ci95_low": "{:.2f}",
        "ci95_high": "{:.2f}",
        "mean_epoch_time_s": "{:.2f}",
        "run_wall_s": "{:.1f}",
        "p_value": "{:.3f}",
    },
)


def schedule(repeats: int) -> list[bool]:
    """Whether each run has system metrics on: on, off, off, on, on, off, … (2·repeats runs)."""
    return [on for i in range(repeats) for on in ((True, False) if i % 2 == 0 else (False, True))]


def run_figures(run_id: str) -> tuple[float, int]:
    """(the run's `other_cpu_share` tag, the system-metric samples it logged), from its run."""
    from mnist_lab import tracking

    share = float(tracking.get_run(run_id).tags[names.TAG_OTHER_CPU_SHARE])
    return share, len(tracking.metric_history(run_id, SAMPLED))


def train_once(
    system_metrics: bool, device: str | None, overrides: dict[str, Any], tag: str
) -> dict[str, Any]:
    """One `cnn_fast` run with `system_metrics` on or off: its figures, read from the run."""
    from mnist_lab.config import load_config
    from mnist_lab.train import train

    settings = {**overrides, "system_metrics": system_metrics, "device": device}
    config = load_config(None, settings, CONFIG)
    start = time.perf_counter()
    result = train(config, tags={"bench_scenario": tag})
    wall = time.perf_counter() - start
    share, samples = run_figures(result.run_id)
    seconds = result.metrics[names.TRAIN_TIME_S]
    return {
        "arm": ON if system_metrics else OFF,
        names.TRAIN_TIME_S: seconds,
        "epoch_time_s": seconds / result.epochs,
        "run_wall_s": wall,
        "system_samples": samples,
        names.TAG_OTHER_CPU_SHARE: share,
        "run_id": result.run_id,
    }


def measure(repeats: int, device: str | None, quick: bool = False) -> list[dict[str, Any]]:
    """Every run's figures, in the order they ran (`schedule`), after the untimed warm-up."""
    overrides = QUICK if quick else {}
    train_once(False, device, {**overrides, **WARM_UP}, "system-metrics/warm-up")
    runs = []
    for on in schedule(repeats):
        run = train_once(on, device, overrides, f"system-metrics/{ON if on else OFF}")
        runs.append(run)
        print(
            f"system metrics {run['arm']:<3}  train_time_s {run[names.TRAIN_TIME_S]:6.2f}  "
            f"run {run['run_wall_s']:6.1f} s  samples {run['system_samples']}  "
            f"other_cpu_share {run[names.TAG_OTHER_CPU_SHARE]:.2f}  {run['run_id']}",
            flush=True,
        )
    return runs


def rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A row per arm and the `on − off` row with Welch's interval, p-value and verdict."""
    from mnist_lab.analysis.statistics import t_interval, welch

    arms = {arm: [r for r in runs if r["arm"] == arm] for arm in (ON, OFF)}
    table = []
    for arm, members in arms.items():
        seconds = [r[names.TRAIN_TIME_S] for r in members]
        low, high = t_interval(seconds)
        shares = [r[names.TAG_OTHER_CPU_SHARE] for r in members]
        table.append({
            "arm": arm,
            "n": len(members),
            names.TRAIN_TIME_S: statistics.fmean(seconds),
            "ci95_low": low,
            "ci95_high": high,
            "mean_epoch_time_s": statistics.fmean(r["epoch_time_s"] for r in members),
            "run_wall_s": statistics.fmean(r["run_wall_s"] for r in members),
            "all_train_time_s": ", ".join(f"{s:.2f}" for s in seconds),
            "system_samples": ", ".join(str(r["system_samples"]) for r in members),
            names.TAG_OTHER_CPU_SHARE: ", ".join(f"{s:.2f}" for s in shares),
            "alone": f"{sum(s < ALONE_BELOW for s in shares)} of {len(shares)}",
            "p_value": "",
            "verdict": "",
            "run_ids": ", ".join(r["run_id"] for r in members),
        })  # fmt: skip
    on, off = table
    result = welch(
        [r[names.TRAIN_TIME_S] for r in arms[ON]], [r[names.TRAIN_TIME_S] for r in arms[OFF]]
    )
    table.append({
        **{column: "" for column in TABLE.columns},
        "arm": DIFFERENCE,
        "n": f"{on['n']} + {off['n']}",
        names.TRAIN_TIME_S: result.difference,
        "ci95_low": result.low,
        "ci95_high": result.high,
        "mean_epoch_time_s": on["mean_epoch_time_s"] - off["mean_epoch_time_s"],
        "run_wall_s": on["run_wall_s"] - off["run_wall_s"],
        "alone": f"{_alone(runs)} of {len(runs)}",
        "p_value": result.p_value,
        "verdict": verdict(result.difference, result.p_value, on[names.TRAIN_TIME_S]),
    })  # fmt: skip
    return table


def _alone(runs: list[dict[str, Any]]) -> int:
    return sum(r[names.TAG_OTHER_CPU_SHARE] < ALONE_BELOW for r in runs)


def verdict(difference: float, p_value: float, on_seconds: float) -> str:
    """The lab's words for on − off: a tie inside the noise, else who is faster."""
    from mnist_lab.analysis.statistics import ALPHA

    if p_value >= ALPHA:
        return "tie: their cost is inside the noise"
    share = difference / (on_seconds - difference)
    if difference > 0:
        return f"system metrics slow training beyond noise ({share:+.1%} of off's time)"
    return f"runs with system metrics trained faster beyond noise ({share:+.1%}): not a cost"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs an arm (default 3)")
    parser.add_argument("--device", default=None, help="override the config's device")
    parser.add_argument("--output-dir", default=None, help="write system-metrics.md/.csv there")
    parser.add_argument("--quick", action="store_true", help=f"cnn_fast at {QUICK_RECIPE}")
    args = parser.parse_args(argv)
    if args.repeats < 2:
        parser.error("--repeats must be at least 2: an arm's interval needs two runs")
    start_bench(args.device)
    table = rows(measure(args.repeats, args.device, args.quick))
    difference = table[-1]
    print(
        f"on − off: train_time_s {difference[names.TRAIN_TIME_S]:+.2f} s, 95 % interval "
        f"[{difference['ci95_low']:+.2f}, {difference['ci95_high']:+.2f}] (Welch, n = "
        f"{difference['n']}), p = {difference['p_value']:.3f}: {difference['verdict']}; "
        f"{difference['alone']} runs had their cores to themselves",
        flush=True,
    )
    if args.output_dir:
        recipe = QUICK_RECIPE if args.quick else results_table.FULL
        where = machine_name(resolve_device(args.device or "auto"))
        print(f"wrote {results_table.write(TABLE, table, args.output_dir, where, recipe)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
