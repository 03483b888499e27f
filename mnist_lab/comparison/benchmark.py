"""Train every model with its experiments/<model>.yaml under one parent run, then compare them.

Each model is a nested child run of a `kind=benchmark` parent (with `seeds` > 1, a `repeats`
run whose children are its seeds: the comparison then has n seeds a row, and its significance
tests count them). A model that fails (a bad config, missing weights, a crash, a NaN loss)
becomes a failed row of the table; the others still run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mnist_lab import names, tracking
from mnist_lab.comparison.compare import Comparison, Failure, compare
from mnist_lab.config import load_config
from mnist_lab.errors import ConfigError
from mnist_lab.models import ARCHITECTURES, benchmark_models

log = logging.getLogger(__name__)


def check_models(models: Sequence[str]) -> list[str]:
    unknown = [m for m in models if m not in ARCHITECTURES]
    if unknown or not models:
        raise ConfigError(
            f"unknown model {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid models: {', '.join(ARCHITECTURES)}"
        )
    return list(models)


def benchmark(
    models: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    output_dir: str = "comparison",
    seeds: int = 1,
) -> Comparison:
    """Train `models` (default: every lab model) with `overrides` on top of their YAML, each at
    `seeds` seeds, and compare them.

    Configs are all built before anything trains, so a typo fails fast, not an hour in.
    """
    from mnist_lab.repeats import check_seeds, train_seeds

    check_seeds(seeds)
    models = check_models(models or benchmark_models())
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    configs = {m: load_config(m, overrides) for m in models}
    run_ids: list[str] = []
    failures: list[Failure] = []
    with tracking.run(run_name="benchmark", tags={names.TAG_KIND: "benchmark"}) as parent:
        tracking.set_tags({names.TAG_KIND: "benchmark", "benchmark_models": ",".join(models)})
        tracking.log_params(
            {**{f"benchmark_{k}": v for k, v in overrides.items()}, "benchmark_seeds": seeds}
        )
        for model, config in configs.items():
            log.info("benchmark: training %s (%d seed(s))", model, seeds)
            try:
                tags = {"benchmark_run": parent.info.run_id}
                run_ids += train_seeds(config, seeds, nested=True, tags=tags).run_ids
            except Exception as err:  # one broken model must not stop the others
                log.exception("benchmark: %s failed", model)
                child = _failed_child(parent.info.run_id, model)
                failures.append(Failure(model, f"{type(err).__name__}: {err}", child))
        comparison = compare(run_ids=run_ids, failures=failures, output_dir=output_dir, nested=True)
    return comparison


def _failed_child(parent_id: str, model: str) -> str | None:
    """The run id of the FAILED child for `model`, if training got as far as starting one."""
    children = tracking.search_runs(
        tracking.experiment_name(),
        f"tags.mlflow.parentRunId = '{parent_id}' and tags.{names.TAG_MODEL} = '{model}'",
    )
    return children[0].run_id if children else None
