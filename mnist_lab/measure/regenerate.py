"""`python -m mnist_lab.measure all`: regenerate every table of results/ on this machine.

`make results` runs it: one measure script after another, each in its own process.

Each script merges its rows into results/<name>.csv and rewrites the Markdown beside it
(results_table.py): rows of other machines stay. `--quick` shortens the long recipes (fewer
epochs, digits, trials or repeats); a table whose rows it shortened says so in a "quick:" line
and in each row's `recipe` column, so a quick figure never passes for the full recipe's.
Finally `report` rewrites configurations.md, benchmark.md and robustness.md from the tracking
store's train runs, when it has any.

    python -m mnist_lab.measure all --quick                 # ~15 min on 2 idle CPU cores
    python -m mnist_lab.measure all --only training,onnx     # some pieces
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mnist_lab.measure import results_table

PROG = "python -m mnist_lab.measure all"


@dataclass(frozen=True)
class Piece:
    """A measure script's invocation: its arguments for the full and the quick run, the files
    it writes and roughly how long each run takes on 2 CPU cores."""

    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    files: tuple[str, ...]
    full_min: float
    quick_min: float
    needs: tuple[str, ...] = ()  # modules outside the lab's dependencies; skipped without them
    # A simulation: its full rows hold on every machine, so --quick keeps them rather than
    # replace them with noisier ones.
    machine_independent: bool = False


PIECES = (
    Piece("calibration", (), ("--quick",), ("statistics",), 4, 0.5, machine_independent=True),
    Piece("cleaning", (), ("--repeats", "20"), ("cleaning",), 1, 0.3),
    Piece("onnx", (), ("--repeats", "1", "--batch", "1,256"), ("onnx",), 2, 0.5),
    Piece(
        "onnx-exporters",
        (),
        ("--repeats", "1", "--models", "cnn"),
        ("onnx-exporters",),
        2,
        0.3,
        needs=("onnxscript",),
    ),
    Piece("serving", (), ("--quick",), ("serving",), 2, 1),
    Piece(
        "profile",
        ("--config", "experiments/cnn_fast.yaml", "--steps", "30"),
        ("--config", "experiments/cnn_fast.yaml", "--steps", "5", "--warmup", "1"),
        ("profiles",),
        1,
        0.3,
    ),
    Piece(
        "profile",
        ("--compare-precision", "--model", "cnn", "vit", "alexnet", "vgg16", "faster_rcnn"),
        ("--compare-precision", "--model", "cnn", "vit", "--steps", "2", "--warmup", "1"),
        ("precision",),
        5,
        0.5,
    ),
    Piece("constraints", (), ("--quick",), ("constraints",), 15, 1),
    Piece("tuning", (), ("--quick",), ("tuning",), 20, 2),
    Piece(
        "time-to-accuracy",
        (),
        ("--quick",),
        ("time-to-accuracy", "time-to-accuracy-peer"),
        100,
        1.5,
    ),
    Piece("training", (), ("--quick",), ("training",), 90, 4),
    Piece("system-metrics", (), ("--quick",), ("system-metrics",), 5, 3),
    Piece(
        "tracking-outage",
        (),
        ("--outage-s", "20", "--epochs", "3", "--max-train-samples", "2000"),
        ("tracking-outage",),
        15,
        3,
    ),
)


SCRIPTS = tuple(dict.fromkeys(p.script for p in PIECES))


def invocation(piece: Piece, quick: bool, output_dir: str) -> list[str]:
    args = piece.quick if quick else piece.full
    return [
        sys.executable,
        "-m",
        "mnist_lab.measure",
        piece.script,
        *args,
        "--output-dir",
        output_dir,
    ]


def has_full_rows(piece: Piece, output_dir: str) -> bool:
    """Whether every file of `piece` in `output_dir` holds rows of the full recipe."""
    files = [results_table.read(Path(output_dir) / f"{name}.csv") for name in piece.files]
    return all(rows and all(r.get("recipe") == results_table.FULL for r in rows) for rows in files)


def report(output_dir: str) -> None:
    """`report` into `output_dir`; a store without train runs leaves the files as they are
    (its error says so), which fails nothing here."""
    command = [sys.executable, "-m", "mnist_lab", "report", "--output-dir", output_dir]
    print(f"== {' '.join(command[1:])}", flush=True)
    code = subprocess.run(command, check=False).returncode
    if code:
        print(f"== report: exit {code}: {', '.join(REPORT_FILES)} left as they were")


REPORT_FILES = ("configurations", "benchmark", "robustness")
# Pages that compare runs a user names: no `all` run can choose them, so they are kept as written.
RUN_PAGES = {
    "sources": "python -m mnist_lab.measure sources --runs … --against … --output-dir results"
}
INDEX = """# Results

Every table here is written by a command, never typed: a measure script from its own runs
(`python -m mnist_lab.measure <script> --output-dir results`) or `python -m mnist_lab report`
from tagged MLflow runs. `python -m mnist_lab.measure all` (`make results`) runs them all on the
machine it runs on; this index is rewritten with them. Each Markdown table has its CSV beside it.

## How to read them

- **n** is the number of runs, repeats or trials behind a row; a row of n = 1 is one run at one
  seed, and a second seed moves a test accuracy about as much as its interval is wide, so a
  difference of a few tenths between two such rows is a tie.
  [docs/comparisons.md](../docs/comparisons.md) says how to get n, intervals and tests for a
  claim, and [statistics.md](statistics.md) how often each is wrong.
- Every row names its **machine** (CPU model, vector units and cores, or the GPU), the versions
  it ran with, the date and its **recipe**: `full`, or what a `--quick` run shortened. A page
  has a section per machine and recipe; a quick section says so in its heading. Re-running a
  script replaces only its own machine's rows.
- Times are wall-clock seconds on the machine named, and mean nothing beyond it, nor when other
  work shared its cores: read ratios measured side by side. `report` shows a configuration's
  seconds only where every run had its cores to itself (column `alone`).
- The T4 GPU seconds in [time-to-accuracy.md](time-to-accuracy.md) are reference targets
  (`mnist_lab/measure/data/t4_reference.csv`), not the lab's measurements.

## Files

| file | title | written by | `all --quick` | `all` |
|---|---|---|---|---|
"""


def write_index(output_dir: str | Path) -> Path:
    """Write results/README.md (`index_text`)."""
    path = Path(output_dir) / "README.md"
    path.write_text(index_text(output_dir))
    return path


def index_text(output_dir: str | Path) -> str:
    """results/README.md: each file present, its title (its first line) and the command that
    writes it, with the minutes a quick and a full run take on 2 CPU cores."""
    out = Path(output_dir)
    rows = []
    for piece in PIECES:
        for name in piece.files:
            words = [
                "python -m mnist_lab.measure",
                piece.script,
                *piece.full,
                "--output-dir results",
            ]
            command = f"`{' '.join(words)}`"
            timing = (f"~{piece.quick_min:g} min", f"~{piece.full_min:g} min")
            rows.append((name, command, *timing))
    rows += [(name, "`python -m mnist_lab report`", "from the store", "from the store")
             for name in REPORT_FILES]  # fmt: skip
    rows += [(name, f"`{command}`", "from named runs", "from named runs")
             for name, command in RUN_PAGES.items()]  # fmt: skip
    lines = []
    for name, command, quick, full in rows:
        page = out / f"{name}.md"
        if not page.exists():
            continue
        title = page.read_text().splitlines()[0].removeprefix("# ")
        csv = f"[{name}.md]({name}.md) ([csv]({name}.csv))"
        lines.append(f"| {csv} | {title} | {command} | {quick} | {full} |")
    return INDEX + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="shortened recipes, said so in the files"
    )
    parser.add_argument(
        "--output-dir", default="results", help="where the tables go (default results)"
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma list of pieces to run, of: {', '.join(SCRIPTS)}, report",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(",")) if args.only else None
    known = {p.script for p in PIECES} | {"report"}
    if chosen and chosen - known:
        parser.error(
            f"--only: unknown piece(s) {sorted(chosen - known)}; choose from {sorted(known)}"
        )
    failed = []
    for piece in PIECES:
        if chosen and piece.script not in chosen:
            continue
        command = invocation(piece, args.quick, args.output_dir)
        minutes = piece.quick_min if args.quick else piece.full_min
        shown = " ".join(["python", *command[1:]])
        if args.quick and piece.machine_independent and has_full_rows(piece, args.output_dir):
            print(f"== {shown}: kept the full rows (they do not depend on the machine)")
            continue
        missing = [m for m in piece.needs if importlib.util.find_spec(m) is None]
        if missing:
            print(f"== {shown}: skipped: needs {', '.join(missing)} (pip install them)")
            continue
        print(f"== {shown}  (~{minutes:g} min on 2 cores)", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        code = subprocess.run(command, check=False).returncode
        print(
            f"== {piece.script}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True
        )
        if code:
            failed.append(piece.script)
    if (not chosen or "report" in chosen) and not args.dry_run:
        report(args.output_dir)
    if not args.dry_run:
        print(f"wrote {write_index(args.output_dir)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
