"""results/ is written by commands: the shared writer, the files it wrote, `measure all`.

Plain file reads and a writer into tmp_path: no MNIST, no MLflow, no model.
"""

import csv
import re
from pathlib import Path

import pytest

from mnist_lab.measure import regenerate, results_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
TABLE = results_table.Table(
    name="toy",
    title="A toy table",
    command="python -m mnist_lab.measure toy --output-dir results",
    header="What a toy row is.",
    columns=("model", "n", "seconds"),
    key=("model",),
    formats={"seconds": "{:.1f}"},
    packages=("numpy",),
)


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_the_writer_puts_machine_versions_n_and_recipe_on_every_row(tmp_path):
    rows = [{"model": "cnn", "n": 3, "seconds": 1.25}, {"model": "vit", "n": 1, "seconds": 9.0}]
    page = results_table.write(TABLE, rows, tmp_path, "AMD EPYC, AVX2, 2 cores")

    written = rows_of(tmp_path / "toy.csv")
    assert [r["model"] for r in written] == ["cnn", "vit"]
    for row in written:
        assert row["machine"] == "AMD EPYC, AVX2, 2 cores" and row["recipe"] == "full"
        assert re.fullmatch(r"torch \S+, mlflow \S+, numpy \S+", row["versions"])
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", row["date"])
    text = page.read_text()
    assert text.startswith("# A toy table\n\nWhat a toy row is.")
    assert f"Written by `{TABLE.command}`" in text and "on AMD EPYC, AVX2, 2 cores" in text
    assert "| model | n | seconds |" in text and "| cnn | 3 | 1.2 |" in text
    assert "## AMD EPYC, AVX2, 2 cores" in text and "[toy.csv](toy.csv)" in text


def test_a_rerun_replaces_its_own_machines_rows_and_keeps_the_others(tmp_path):
    results_table.write(TABLE, [{"model": "cnn", "n": 1, "seconds": 5.0}], tmp_path, "Xeon, AMX")
    epyc = [{"model": "cnn", "n": 1, "seconds": 7.0}, {"model": "vit", "n": 1, "seconds": 9.0}]
    results_table.write(TABLE, epyc, tmp_path, "EPYC, AVX2")
    results_table.write(TABLE, [{"model": "cnn", "n": 2, "seconds": 6.0}], tmp_path, "EPYC, AVX2")

    rows = {(r["machine"], r["model"]): r for r in rows_of(tmp_path / "toy.csv")}
    assert set(rows) == {("Xeon, AMX", "cnn"), ("EPYC, AVX2", "cnn"), ("EPYC, AVX2", "vit")}
    assert rows["Xeon, AMX", "cnn"]["seconds"] == "5.0"  # another machine's row: kept
    assert rows["EPYC, AVX2", "cnn"]["n"] == "2"  # its own: replaced
    text = (tmp_path / "toy.md").read_text()
    assert "## Xeon, AMX" in text and "## EPYC, AVX2" in text


def test_a_quick_row_says_so_and_does_not_replace_the_full_recipes(tmp_path):
    results_table.write(TABLE, [{"model": "cnn", "n": 1, "seconds": 50.0}], tmp_path, "EPYC")
    quick = "1 epoch, 5 000 train digits"
    results_table.write(TABLE, [{"model": "cnn", "n": 1, "seconds": 5.0}], tmp_path, "EPYC", quick)

    assert sorted(r["recipe"] for r in rows_of(tmp_path / "toy.csv")) == sorted(["full", quick])
    text = (tmp_path / "toy.md").read_text()
    assert f"## EPYC — quick: {quick}" in text and "**Quick run**" in text


def test_rows_missing_a_column_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="seconds"):
        results_table.write(TABLE, [{"model": "cnn", "n": 1}], tmp_path, "EPYC")


PAGES = sorted(p for p in RESULTS.glob("*.md") if p.name != "README.md")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_results_page_names_the_command_that_writes_it_and_has_its_csv(page):
    text = page.read_text(encoding="utf-8")
    assert re.search(r"Written by `python -m mnist_lab[ .]|writes them\.", text), page.name
    assert page.with_suffix(".csv").exists(), f"{page.name} has no CSV beside it"


def test_the_results_index_lists_every_page_with_its_command():
    index = (RESULTS / "README.md").read_text(encoding="utf-8")
    assert "python -m mnist_lab.measure all" in index
    for page in PAGES:
        assert f"[{page.name}]({page.name}) ([csv]({page.stem}.csv))" in index, page.name
    assert index == regenerate.index_text(RESULTS)  # as `measure all` writes it


def test_no_results_file_holds_a_local_path():
    for path in RESULTS.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"/(home|tmp|work|Users)/", text), path.name


def test_measure_all_answers_help_and_lists_its_pieces(capsys):
    with pytest.raises(SystemExit) as exit_:
        regenerate.main(["--help"])
    assert exit_.value.code == 0 and "--quick" in capsys.readouterr().out
    assert regenerate.main(["--quick", "--dry-run", "--output-dir", "out"]) == 0
    printed = capsys.readouterr().out
    for piece in regenerate.PIECES:
        assert f"mnist_lab.measure {piece.script}" in printed
    assert "--output-dir out" in printed


def test_measure_all_knows_every_page_it_writes():
    written = {name for piece in regenerate.PIECES for name in piece.files}
    written |= set(regenerate.REPORT_FILES) | set(regenerate.RUN_PAGES)
    assert {p.stem for p in PAGES} <= written
