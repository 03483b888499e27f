"""`python -m mnist_lab.measure sources`: two configurations' accuracy on digits from other sources.

Each run's logged model reads the same digits of every source (fonts; handwriting scanned at
8-32 px: `analysis.sources.source_sets(per_class, seed)`, read as `predict` reads photos), and
the two groups of runs (a configuration each, one run a seed) are compared per source with the
lab's test for accuracies: the t over seeds × digits, paired on the digits
(`statistics.compare_groups`). A run's own report reads 20 digits a class a source; this reads
`--per-class` (100 by default: 1 000 a source), so a gain of a point or two can be told from
the noise.

    python -m mnist_lab.measure sources --runs A1 A2 A3 --against B1 B2 B3 --output-dir results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mnist_lab import names
from mnist_lab.errors import EXIT_LAB_ERROR, LabError
from mnist_lab.measure import results_table

PROG = "python -m mnist_lab.measure sources"

TABLE = results_table.Table(
    name="sources",
    title="Digits from other sources: one configuration against another",
    command=f"{PROG} --runs … --against … --output-dir results",
    header=(
        "Each run's logged model reads the same `n` digits of each source (fonts; handwriting "
        "scanned at 8-32 px and enlarged, read as `predict` reads photos; "
        "`analysis.sources.source_sets(per_class, seed)`). `runs` and `against` are two "
        "configurations (their seeds' runs); each cell is the mean accuracy over the seeds with "
        "its 95 % interval (t over seeds × digits), and `difference` is runs − against with the "
        "interval and p of the same test, paired on the digits. A difference whose interval "
        "holds 0 is a tie."
    ),
    columns=(
        "comparison",
        "source",
        "n",
        "runs",
        "against",
        "difference",
        "p_value",
        "verdict",
        "run_ids",
    ),
    key=("comparison", "source"),
    formats={"p_value": "{:.2g}"},
)


def model_folder(run_id: str) -> Path:
    """The local folder of `run_id`'s logged model's weights (spec.json, weights.safetensors)."""
    from mnist_lab.tracking.query import logged_model_folder, tracking_uri

    root = logged_model_folder(run_id)
    if root is None:
        raise LabError(
            f"run {run_id} logged no model '{names.MODEL_ARTIFACT}' in {tracking_uri()}: pass "
            "the ids of finished train runs (`mnist-lab runs` lists them), with "
            "MLFLOW_TRACKING_URI naming their store"
        )
    return next(Path(root).rglob("spec.json")).parent


def correct_by_source(folders: list[Path], sets: dict) -> dict[str, np.ndarray]:
    """Source → bool [runs, digits]: which digits each model (`model_folder`'s) read right."""
    from mnist_lab.analysis.robustness import model_predict
    from mnist_lab.analysis.sources import evaluate_sources
    from mnist_lab.inference import load_module

    rows: dict[str, list[np.ndarray]] = {source: [] for source in sets}
    for folder in folders:
        _, module = load_module(folder)
        scores = evaluate_sources(model_predict(module), sets, "cpu")
        for source, score in scores.items():
            rows[source].append(score.predicted == sets[source].labels)
    return {source: np.stack(row) for source, row in rows.items()}


def compare(runs: dict[str, np.ndarray], against: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A row per source: each group's summary and their paired difference."""
    from mnist_lab.analysis.statistics import ALPHA, compare_groups, summarize

    table = []
    for source in runs:
        a, b = summarize(runs[source]), summarize(against[source])
        d = compare_groups(runs[source], against[source], paired=True)
        verdict = "tie" if not d.p_value < ALPHA else ("better" if d.difference > 0 else "worse")
        table.append({
            "source": source,
            "n": runs[source].shape[1],
            "runs": f"{100 * a.mean:.2f} [{100 * a.low:.2f}, {100 * a.high:.2f}]",
            "against": f"{100 * b.mean:.2f} [{100 * b.low:.2f}, {100 * b.high:.2f}]",
            "difference": f"{100 * d.difference:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]",
            "p_value": d.p_value,
            "verdict": verdict,
        })  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, metavar="RUN_ID", help="a config")
    parser.add_argument("--against", nargs="+", required=True, metavar="RUN_ID", help="another")
    parser.add_argument("--per-class", type=int, default=100, help="digits a class a source")
    parser.add_argument("--seed", type=int, default=1, help="the sets' seed (runs report 0's)")
    parser.add_argument("--name", default=None, help="the comparison's name in the table")
    parser.add_argument("--output-dir", default=None, help="write sources.md/.csv there")
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error("--per-class must be at least 1")
    from mnist_lab.analysis.sources import source_sets
    from mnist_lab.engine.device import machine_name, resolve_device

    try:
        # every run's model found (and fetched once) before the sets are drawn
        runs = [model_folder(run_id) for run_id in args.runs]
        against = [model_folder(run_id) for run_id in args.against]
        sets = source_sets(args.per_class, args.seed)
        rows = compare(correct_by_source(runs, sets), correct_by_source(against, sets))
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LAB_ERROR
    name = args.name or f"{args.runs[0][:8]}… − {args.against[0][:8]}…"
    ids = " ".join(r[:8] for r in args.runs) + " − " + " ".join(r[:8] for r in args.against)
    for row in rows:
        row |= {"comparison": name, "run_ids": ids}
        print(
            f"{row['source']:<18} n {row['n']}  {row['runs']}  against {row['against']}  "
            f"difference {row['difference']}  p {row['p_value']:.2g}: {row['verdict']}"
        )
    if args.output_dir:
        machine = machine_name(resolve_device("cpu"))
        print(f"wrote {results_table.write(TABLE, rows, args.output_dir, machine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
