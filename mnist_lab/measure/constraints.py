"""`python -m mnist_lab.measure constraints`: does a budget steer the search?

Pairs of CNN studies over tuning/cnn.yaml's space, alike but for `--constraint`: the same
sampler (TPE), seed, trial count and data; one epoch a trial on a subset (the share of trials
within a budget on the model's size does not depend on how long each trains). A pair at each
of `--seeds` seeds; prints, for each study, the share of completed trials within the budget,
and the constrained studies' gain over the unconstrained ones with its paired t interval over
the seeds. Stores are throw-away (a temporary folder).

    python -m mnist_lab.measure constraints                       # 8 pairs of 30 trials, ~15 min
    python -m mnist_lab.measure constraints --budget "num_params<=40000" --n-trials 40
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
QUICK = {"n_trials": 12, "max_train_samples": 1_000, "seeds": 1}
QUICK_RECIPE = "one pair of 12-trial studies on 1 000 train digits"
TABLE = results_table.Table(
    name="constraints",
    title="Budgets as constraints: trials within a budget, with and without `--constraint`",
    command=f"{PROG} --output-dir results",
    header=(
        "Pairs of studies of tuning/cnn.yaml's space, alike but for `--constraint`, one pair at "
        "each seed: TPE, no pruning, one epoch a trial on a subset of the training digits "
        "(1 000 validation digits). TPE's first 10 trials are random, so a pair's first 10 "
        "are the same trials and only the later ones can differ. A row is one study: its "
        "completed trials (n) and how many met the budget; `trials` marks each in order (x "
        "within, . beyond). An `all` row per study averages its seeds' shares, and the "
        "constrained one's `gain` is its share minus the unconstrained one's, with the 95 % "
        "paired t interval and p over the seeds (a tie inside the noise). The budget is on "
        "the model's size, so whether a trial meets it does not depend on the machine."
    ),
    columns=("study", "budget", "seed", "n", "within", "share_within", "gain", "trials"),
    key=("study", "budget", "seed"),
    formats={"share_within": "{:.2f}"},
    packages=("optuna",),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-trials", type=int, default=30, help="a study's (default 30)")
    parser.add_argument("--budget", default="num_params<=40000")
    parser.add_argument("--max-train-samples", type=int, default=2_000)
    # 3 pairs left a steady gain (+0.17 to +0.70 a seed) inside the paired t's noise.
    parser.add_argument("--seeds", type=int, default=8, help="pairs of studies (default 8)")
    parser.add_argument("--output-dir", default=None, help="write constraints.md/.csv there")
    parser.add_argument("--quick", action="store_true", help=QUICK_RECIPE)
    args = parser.parse_args(argv)
    if args.quick:
        args.n_trials, args.max_train_samples = QUICK["n_trials"], QUICK["max_train_samples"]
        args.seeds = QUICK["seeds"]
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
    shares: dict[str, list[float]] = {"no constraint": [], "--constraint": []}
    for seed in range(args.seeds):
        for constraint in (None, args.budget):
            study = "--constraint" if constraint else "no constraint"
            options = TuneOptions(
                model="cnn",
                n_trials=args.n_trials,
                storage=f"sqlite:///{folder / 'optuna.db'}",
                study_name=f"{'constrained' if constraint else 'unconstrained'}-{seed}",
                space_path=str(one_epoch),
                data={"max_train_samples": args.max_train_samples, "val_size": 1_000},
                retrain="none",
                pruner="none",
                seed=seed,
                constraint=constraint,
            )
            tune(options)
            complete = completed_user_attrs(options.storage, options.name, ATTR_METRICS)
            marks = "".join("x" if budget.feasible(m) else "." for m in complete)
            shares[study].append(marks.count("x") / len(marks))
            print(f"seed {seed}  {study:15s} {marks}  {shares[study][-1]:.0%} within", flush=True)
            rows.append(
                {
                    "study": study,
                    "budget": args.budget,
                    "seed": seed,
                    "n": len(marks),
                    "within": marks.count("x"),
                    "share_within": shares[study][-1],
                    "gain": "",
                    "trials": marks,
                }
            )
    for study, values in shares.items():
        rows.append(
            {
                "study": study,
                "budget": args.budget,
                "seed": "all",  # one key whatever the count: a rerun replaces it
                "n": sum(r["n"] for r in rows if r["study"] == study),
                "within": sum(r["within"] for r in rows if r["study"] == study),
                "share_within": sum(values) / len(values),
                "gain": gain(shares["--constraint"], shares["no constraint"])
                if study == "--constraint"
                else "",
                "trials": "",
            }
        )
        print(f"{study:15s} mean share within {rows[-1]['share_within']:.2f}  {rows[-1]['gain']}")
    if args.output_dir:
        recipe = QUICK_RECIPE if args.quick else results_table.FULL
        machine = machine_name(resolve_device("auto"))
        print(f"wrote {results_table.write(TABLE, rows, args.output_dir, machine, recipe)}")
    return 0


def gain(constrained: list[float], unconstrained: list[float]) -> str:
    """The constrained studies' share within the budget minus the unconstrained ones', paired
    by seed: mean [95 % t interval], p; a tie where the interval holds 0."""
    import numpy as np

    from mnist_lab.analysis.statistics import t_test

    differences = np.subtract(constrained, unconstrained)
    n, mean = len(differences), float(differences.mean())
    if n < 2:
        return f"{mean:+.2f} (one seed: no interval)"
    low, high, p = t_test(mean, [(float(differences.var(ddof=1)) / n, n - 1)])
    verdict = "gain" if low > 0 else "loss" if high < 0 else "tie"
    return f"{mean:+.2f} [{low:+.2f}, {high:+.2f}], p {p:.2g}, paired t over {n} seeds: {verdict}"


if __name__ == "__main__":
    raise SystemExit(main())
