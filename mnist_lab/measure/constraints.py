"""`python -m mnist_lab.measure constraints`: does a budget steer the search?

Two CNN studies over tuning/cnn.yaml's space, alike but for `--constraint`: the same sampler
(TPE), seed, trial count and data; one epoch a trial on a subset (the share of trials within
a budget on the model's size does not depend on how long each trains). Prints, for each, the
share of completed trials within the budget. Stores are throw-away (a temporary folder).

    python -m mnist_lab.measure constraints                       # 20 trials each, ~10 min
    python -m mnist_lab.measure constraints --budget "num_params<=40000" --n-trials 30
    python -m mnist_lab.measure constraints --quick --output-dir results
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from mnist_lab.measure import results_table

PROG = "python -m mnist_lab.measure constraints"
QUICK = {"n_trials": 8, "max_train_samples": 1_000}
QUICK_RECIPE = "8 trials a study on 1 000 train digits"
TABLE = results_table.Table(
    name="constraints",
    title="Budgets as constraints: trials within a budget, with and without `--constraint`",
    command=f"{PROG} --output-dir results",
    header=(
        "Two studies of tuning/cnn.yaml's space, alike but for `--constraint`: TPE (its first "
        "trials random), no pruning, one epoch a trial on a subset of the training digits "
        "(1 000 validation digits), the same seed. A row is one study: its completed trials (n) "
        "and how many met the budget. The budget is on the model's size, so whether a trial "
        "meets it does not depend on the machine; n = 1 pair of studies, one seed: the gain "
        "varies with the seed and the budget. `trials` marks each trial in order (x within, "
        ". beyond)."
    ),
    columns=("study", "budget", "seed", "n", "within", "share_within", "trials"),
    key=("study", "budget", "seed"),
    formats={"share_within": "{:.2f}"},
    packages=("optuna",),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--budget", default="num_params<=40000")
    parser.add_argument("--max-train-samples", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None, help="write constraints.md/.csv there")
    parser.add_argument("--quick", action="store_true", help=QUICK_RECIPE)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_trials, args.max_train_samples = QUICK["n_trials"], QUICK["max_train_samples"]
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    import yaml

    from mnist_lab import names
    from mnist_lab.analysis.selection import parse_rule
    from mnist_lab.engine.device import machine_name, resolve_device
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
    rows = []
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
        rows.append(
            {
                "study": "--constraint" if constraint else "no constraint",
                "budget": args.budget,
                "seed": args.seed,
                "n": len(complete),
                "within": inside,
                "share_within": inside / len(complete),
                "trials": "".join("x" if budget.feasible(m) else "." for m in complete),
            }
        )
    if args.output_dir:
        recipe = QUICK_RECIPE if args.quick else results_table.FULL
        machine = machine_name(resolve_device("auto"))
        print(f"wrote {results_table.write(TABLE, rows, args.output_dir, machine, recipe)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
