"""`python -m mnist_lab.measure constraints`: does a budget steer the search?

Two CNN studies over tuning/cnn.yaml's space, alike but for `--constraint`: the same sampler
(TPE), seed, trial count and data; one epoch a trial on a subset (the share of trials within
a budget on the model's size does not depend on how long each trains). Prints, for each, the
share of completed trials within the budget. Stores are throw-away (a temporary folder).

    python -m mnist_lab.measure constraints                       # 20 trials each, ~10 min
    python -m mnist_lab.measure constraints --budget "num_params<=40000" --n-trials 30
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

PROG = "python -m mnist_lab.measure constraints"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--budget", default="num_params<=40000")
    parser.add_argument("--max-train-samples", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    import yaml

    from mnist_lab import names
    from mnist_lab.analysis.selection import parse_rule
    from mnist_lab.engine.device import resolve_device
    from mnist_lab.measure.hardware import hardware
    from mnist_lab.tuning.pareto import ATTR_METRICS
    from mnist_lab.tuning.space import load_space
    from mnist_lab.tuning.study import completed_user_attrs
    from mnist_lab.tuning.tuner import TuneOptions, tune

    objectives = names.metric_names("objective")
    budget = parse_rule(args.budget, objectives, flag="--budget", objective=False)
    print(f"hardware: {hardware(resolve_device('auto'))}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-constraints-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    space = load_space("cnn")
    text = yaml.safe_load(space.path.read_text())
    text["fixed"]["epochs"] = 1
    one_epoch = folder / "cnn.yaml"
    one_epoch.write_text(yaml.safe_dump(text))
    for constraint in (None, args.budget):
        options = TuneOptions(
            model="cnn",
            n_trials=args.n_trials,
            storage=f"sqlite:///{folder / 'optuna.db'}",
            study_name="constrained" if constraint else "unconstrained",
            space_path=str(one_epoch),
            data={"max_train_samples": args.max_train_samples, "val_size": 1_000},
            retrain="none",
            pruner="none",
            seed=args.seed,
            constraint=constraint,
        )
        tune(options)
        complete = completed_user_attrs(options.storage, options.name, ATTR_METRICS)
        inside = sum(budget.feasible(metrics) for metrics in complete)
        print(
            f"{'--constraint ' + repr(constraint) if constraint else 'no constraint':40s} "
            f"{inside} of {len(complete)} completed trials within {budget} "
            f"({inside / len(complete):.0%})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
