"""`train --seeds N`: one configuration trained at N seeds, as the child runs of one parent run
that logs what the seeds say together.

The seeds are `config.seed` … `config.seed + N - 1`; every child keeps the configuration's
`split_seed`, so all of them are scored on the same validation and test digits. The parent run
(tag `kind=repeats`) logs the configuration's params, `seeds`, and for each metric that
names.METRICS marks `repeated` its mean, std and 95 % interval over the seeds (test accuracy's
counts the test digits too: analysis/statistics.py), and `n_seeds`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from mnist_lab import names, tracking
from mnist_lab.analysis.predictions import correct_matrix
from mnist_lab.analysis.statistics import aggregate_runs
from mnist_lab.config import TrainConfig
from mnist_lab.engine.device import resolve_device
from mnist_lab.errors import ConfigError
from mnist_lab.train import TrainResult, train

log = logging.getLogger(__name__)


@dataclass
class RepeatsResult:
    """The seed runs of one configuration; `run_id` is their parent's (None for one seed,
    which is a plain run), `metrics` its aggregates."""

    run_id: str | None
    runs: list[TrainResult]
    metrics: dict[str, float]

    @property
    def run_ids(self) -> list[str]:
        return [run.run_id for run in self.runs]


def check_seeds(n_seeds: int) -> int:
    if n_seeds < 1:
        raise ConfigError(f"seeds={n_seeds} must be >= 1 (runs of the configuration to train)")
    return n_seeds


def train_seeds(
    config: TrainConfig,
    n_seeds: int,
    *,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    run_name: str | None = None,
) -> RepeatsResult:
    """Train `config` at `n_seeds` seeds; with more than one, under a `repeats` parent run.

    `tags` go on every run; `nested` makes the parent (or the one run) a child of the active
    run. A seed that fails ends the parent FAILED: its aggregates would not be the
    configuration's.
    """
    check_seeds(n_seeds)
    name = run_name or config.run_name()
    if n_seeds == 1:
        result = train(config, nested=nested, tags=tags, run_name=run_name)
        return RepeatsResult(None, [result], {})
    device = resolve_device(config.device)
    parent_tags = {
        **tracking.run_tags(config, device),
        names.TAG_KIND: "repeats",
        **(tags or {}),
    }
    with tracking.run(nested=nested, run_name=f"{name}-x{n_seeds}", tags=parent_tags) as parent:
        tracking.log_params({**tracking.run_params(config, device), "seeds": n_seeds})
        child_tags = {**(tags or {}), names.TAG_REPEATS_RUN_ID: parent.info.run_id}
        runs = []
        for seed in range(config.seed, config.seed + n_seeds):
            log.info("seed %d (%d of %d)", seed, seed - config.seed + 1, n_seeds)
            runs.append(
                train(
                    dataclasses.replace(config, seed=seed),
                    nested=True,
                    tags=child_tags,
                    run_name=f"{name}-s{seed}",
                )
            )
        tests = [run.predictions["test"] for run in runs if "test" in run.predictions]
        correct = correct_matrix(tests) if len(tests) == len(runs) else None
        metrics = aggregate_runs([r.metrics for r in runs], names.metric_names("repeated"), correct)
        tracking.log_metrics(metrics)
        mean = names.aggregate(names.TEST_ACCURACY, "mean")
        low = names.aggregate(names.TEST_ACCURACY, "ci95_low")
        high = names.aggregate(names.TEST_ACCURACY, "ci95_high")
        log.info(
            "%d seeds: test_accuracy %.4f, 95 %% interval [%.4f, %.4f] (seeds × digits)  run %s",
            n_seeds,
            metrics[mean],
            metrics[low],
            metrics[high],
            parent.info.run_id,
        )
        return RepeatsResult(parent.info.run_id, runs, metrics)
