"""Adding a metric is one entry in names.METRICS and the function that computes it: a toy
top-2 accuracy, added here and nowhere in the package, is logged by a run and read by compare,
report, register, `register --where` and `tune --objectives` / `--pick` as its flags say."""

import dataclasses
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.analysis import metrics
from mnist_lab.analysis.selection import direction, label
from mnist_lab.cli import main
from mnist_lab.errors import ConfigError

TOP2 = "test_top2_accuracy"
TINY = {
    "epochs": 1,
    "max_train_samples": 200,
    "max_test_samples": 200,
    "val_size": 100,
    "robustness_samples": 20,
}


def top2_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The share of digits whose label is among the two most probable classes.
    probabilities: [N, 10]; labels: [N]."""
    top2 = np.argsort(probabilities, axis=1)[:, -2:]
    return float((top2 == labels[:, None]).any(axis=1).mean())


ENTRY = names.Metric(
    TOP2, names.MAXIMIZE, "test top-2 accuracy", final=True, compare=True, report=True
)


def add(monkeypatch: pytest.MonkeyPatch, entry: names.Metric) -> None:
    """The whole of adding a metric: its entry and its function."""
    monkeypatch.setitem(names.METRICS, entry.name, entry)
    monkeypatch.setitem(metrics.FROM_PREDICTIONS, entry.name, top2_accuracy)


def test_the_toy_metric_computes_top2_accuracy():
    probabilities = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    assert top2_accuracy(probabilities, np.array([1, 0, 2])) == pytest.approx(2 / 3)


@pytest.fixture
def run(mnist_dir, mlflow_store, monkeypatch, caplog) -> str:
    """One tiny cnn run trained with the toy metric in the table."""
    from mnist_lab.config import load_config
    from mnist_lab.train import train

    add(monkeypatch, ENTRY)
    with caplog.at_level(logging.WARNING, logger="mnist_lab.train"):
        run_id = train(load_config("cnn", TINY)).run_id
    assert "marks" not in caplog.text  # every final metric was computed
    return run_id


def test_a_metric_added_to_the_table_is_logged_compared_reported_and_registered(
    run, tmp_path, monkeypatch, capsys
):
    logged = MlflowClient().get_run(run).data.metrics
    assert 0 < logged[TOP2] <= 1 and logged[TOP2] >= logged[names.TEST_ACCURACY]
    assert set(names.metric_names("final")) <= set(logged)

    assert main(["compare", "--output-dir", str(tmp_path / "compare")]) == 0
    table = pd.read_csv(tmp_path / "compare" / "comparison.csv")
    assert table.loc[0, TOP2] == pytest.approx(logged[TOP2])
    assert f"{logged[TOP2]:.4f}" in (tmp_path / "compare" / "comparison.md").read_text()
    assert main(["compare", "--best-by", TOP2, "--output-dir", str(tmp_path / "best")]) == 0

    assert main(["report", "--output-dir", str(tmp_path / "results")]) == 0
    assert TOP2 in pd.read_csv(tmp_path / "results" / "configurations.csv").columns
    assert f"{logged[TOP2]:.4f}" in (tmp_path / "results" / "configurations.md").read_text()

    # Not flagged: no version tag, and no budget for `register --where` (a test-set score).
    assert main(["register", "--model", "cnn", "--where", f"{TOP2}>=0"]) == 1
    assert f"unknown metric {TOP2!r}" in capsys.readouterr().err
    flagged = dataclasses.replace(ENTRY, budget=True, register=True)
    monkeypatch.setitem(names.METRICS, TOP2, flagged)
    assert main(["register", "--model", "cnn", "--where", f"{TOP2}>=0"]) == 0
    (version,) = MlflowClient().search_model_versions("name = 'mnist-cnn'")
    assert float(version.tags[TOP2]) == pytest.approx(logged[TOP2])
    assert main(["register", "--model", "cnn", "--force", "--where", f"{TOP2}>1"]) == 1
    assert "is within --where" in capsys.readouterr().err


def test_a_flagged_metric_is_an_objective_and_a_pick_budget(monkeypatch):
    from mnist_lab.tuning.objectives import parse_objectives, trial_metrics

    add(monkeypatch, ENTRY)
    with pytest.raises(ConfigError, match=f"unknown objective '{TOP2}'"):
        parse_objectives(TOP2, None, "auto")
    with pytest.raises(ConfigError, match=f"unknown metric '{TOP2}'"):
        parse_objectives(None, f"val_accuracy, {TOP2}>=0.9", "auto")

    add(monkeypatch, dataclasses.replace(ENTRY, objective=True))
    chosen = parse_objectives(f"val_accuracy,{TOP2}", f"val_accuracy, {TOP2}>=0.9", "auto")
    assert chosen.directions == ["maximize", "maximize"] and chosen.pruner == "none"
    assert chosen.pick is not None and not chosen.pick.feasible({TOP2: 0.8})
    assert trial_metrics({names.BEST_VAL_ACCURACY: 0.9, TOP2: 0.95})[TOP2] == 0.95
    assert direction(TOP2) == names.MAXIMIZE and label(TOP2) == "test top-2 accuracy"


def test_a_computed_metric_without_an_entry_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(metrics.FROM_PREDICTIONS, TOP2, top2_accuracy)
    with pytest.raises(ValueError, match=f"{TOP2} .* no entry in names.METRICS"):
        metrics.prediction_metrics(np.full((2, 10), 0.1), np.array([0, 1]))


def test_every_entry_is_well_formed():
    for name, metric in names.METRICS.items():
        assert metric.name == name and metric.label
        assert metric.fmt.format(0.5)
    assert not set(names.metric_names("budget")) & {names.TEST_ACCURACY, names.TEST_LOSS}
    with pytest.raises(ValueError, match="direction 'up'"):
        names.Metric("x", "up", "x")
    with pytest.raises(ValueError, match="unknown metric flag"):
        names.metric_names("shown")


def test_the_guide_names_every_module_that_reads_the_table():
    """docs/extending.md's "Adding a metric" names each file a new metric touches or reaches."""
    package = Path(names.__file__).parent
    guide = (package.parent / "docs" / "extending.md").read_text()
    section = guide.split("## Adding a metric")[1].split("\n## ")[0]
    reads = re.compile(r"names\.METRICS\b|\bmetric_names\(|FROM_PREDICTIONS|import METRICS")
    readers = [p.relative_to(package) for p in sorted(package.rglob("*.py"))]
    readers = [p for p in readers if reads.search((package / p).read_text())]
    assert len(readers) >= 10
    assert [str(p) for p in readers if str(p) not in section] == []
