"""One writer for every table in results/: rows → `<name>.csv` (every row, every column) and
`<name>.md` (a title, the prose header, a "Written by" line and one table per machine).

Each row carries the machine it ran on, the versions it ran with, the date, n and the recipe
("full", or what a `--quick` run shortened). A re-run replaces only the rows of its own machine,
recipe and key, so rows measured on other machines stay: results accumulate per CPU type.
"""

from __future__ import annotations

import csv
import importlib.metadata
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Columns every row gets from `write`, after the table's own.
MACHINE, VERSIONS, DATE, RECIPE = "machine", "versions", "date", "recipe"
PROVENANCE = (MACHINE, VERSIONS, DATE, RECIPE)
FULL = "full"
BASE_PACKAGES = ("torch", "mlflow")


@dataclass(frozen=True)
class Table:
    """What a results file holds: its name (results/<name>.md and .csv), title, the command
    that writes it, a prose header (what the rows are and how to read them), its columns in
    order (n among them), the columns that tell two rows of one machine apart, the cells'
    formats, and the packages whose versions each row names besides torch and mlflow."""

    name: str
    title: str
    command: str
    header: str
    columns: Sequence[str]
    key: Sequence[str]
    formats: dict[str, str] = field(default_factory=dict)
    packages: Sequence[str] = ()


def versions(packages: Iterable[str] = ()) -> str:
    """`torch 2.14.1, mlflow 3.17.2, …`: the installed versions, `-` for one not installed."""
    found = []
    for package in dict.fromkeys((*BASE_PACKAGES, *packages)):
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} -")
    return ", ".join(found)


def write(
    table: Table,
    rows: Sequence[dict[str, Any]],
    output_dir: str | Path,
    machine: str,
    recipe: str = FULL,
) -> Path:
    """Merge `rows` (measured now on `machine`, with `recipe`) into `<output_dir>/<name>.csv`,
    replacing the earlier rows of the same machine, recipe and key, then write the Markdown
    from every row. Returns the Markdown's path."""
    missing = [c for row in rows for c in table.columns if c not in row]
    if missing:
        raise ValueError(f"{table.name}: rows lack columns {sorted(set(missing))}")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not rows and (out / f"{table.name}.csv").exists():
        return out / f"{table.name}.md"  # nothing measured: the file stays as it was
    stamp = {
        MACHINE: machine,
        VERSIONS: versions(table.packages),
        DATE: datetime.now(UTC).strftime("%Y-%m-%d"),
        RECIPE: recipe,
    }
    new = [{**{c: row[c] for c in table.columns}, **stamp} for row in rows]
    fields = [*table.columns, *PROVENANCE]
    kept = [r for r in read(out / f"{table.name}.csv") if _key(table, r) not in _keys(table, new)]
    merged = [{f: r.get(f, "") for f in fields} for r in [*kept, *new]]
    with (out / f"{table.name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(merged)
    path = out / f"{table.name}.md"
    path.write_text(markdown(table, merged, stamp))
    return path


def read(path: Path) -> list[dict[str, str]]:
    """The rows of an earlier CSV (every cell a string), none if there is no file."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _key(table: Table, row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row.get(c, "")) for c in (MACHINE, RECIPE, *table.key))


def _keys(table: Table, rows: Sequence[dict[str, Any]]) -> set[tuple[str, ...]]:
    return {_key(table, r) for r in rows}


def markdown(
    table: Table, rows: Sequence[dict[str, Any]], stamp: dict[str, str] | None = None
) -> str:
    """The page: title, header, the "Written by" line, then a section per machine and recipe
    naming its versions and dates, each with the table's columns."""
    lines = [f"# {table.title}", "", table.header.strip(), ""]
    if not rows:
        return "\n".join([*lines, f"No rows yet: `{table.command}` writes them.", ""])
    lines += [
        f"Written by `{table.command}` on {stamp[DATE]} on {stamp[MACHINE]} "
        f"(the rows of other machines are kept from their own runs; every row's machine, "
        f"versions and date are in [{table.name}.csv]({table.name}.csv)).",
        "",
    ]
    sections: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        sections.setdefault((row[MACHINE], row[RECIPE]), []).append(row)
    for (machine, recipe), members in sections.items():
        heading = machine if recipe == FULL else f"{machine} — quick: {recipe}"
        lines += [f"## {heading}", ""]
        if recipe != FULL:
            lines += [f"**Quick run** ({recipe}): not the full recipe's figures.", ""]
        found = sorted({str(r[VERSIONS]) for r in members})
        dates = sorted({str(r[DATE]) for r in members})
        lines += [
            f"{'; '.join(found)}; measured {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}.",
            "",
        ]
        lines += [*_grid(table, members), ""]
    return "\n".join(lines)


def _grid(table: Table, rows: Sequence[dict[str, Any]]) -> list[str]:
    head = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = [
        "| " + " | ".join(_cell(r[c], table.formats.get(c)) for c in table.columns) + " |"
        for r in rows
    ]
    return [head, rule, *body]


def _cell(value: Any, fmt: str | None) -> str:
    """A cell as `fmt` formats it (a CSV's string read back as a number first); blank for
    missing or NaN."""
    if value is None or value == "":
        return ""
    if fmt is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return "" if math.isnan(number) else fmt.format(number)
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).replace("|", "\\|")
