"""`report`: results tables written from MLflow runs, each row with n, its interval and machine."""

import numpy as np
import pandas as pd
import pytest
from lab_helpers import fake_run, scored_run
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.analysis.statistics import T_OVER_SEEDS, T_SEEDS_DIGITS, WILSON, wilson_interval
from mnist_lab.cli import main
from mnist_lab.measure import regenerate

MACHINE = {names.TAG_MACHINE: "AMD EPYC, AVX2, 2 cores"}


def test_report_writes_every_configuration_and_the_newest_benchmark(mlflow_store, tmp_path, capsys):
    rng = np.random.default_rng(0)
    preset = {**MACHINE, names.TAG_CONFIG: "cnn_fast.yaml"}
    fast = [scored_run("cnn", rng.random(1000) < 0.99, s, tags=preset, lr="0.01") for s in range(3)]
    longer = scored_run("cnn", rng.random(1000) < 0.99, tags=preset, lr="0.01", epochs="3")
    slow = scored_run("cnn", rng.random(1000) < 0.98, tags=MACHINE, lr="0.02")
    parent = fake_run("mnist-lab", "?", {}, {names.TAG_KIND: "benchmark"})
    MlflowClient().log_param(parent, "benchmark_seeds", "3")
    member = {**MACHINE, "benchmark_run": parent}
    bench = [scored_run(m, rng.random(1000) < a, s, tags=member, epochs="1")
             for m, a in (("cnn", 0.99), ("vit", 0.9)) for s in range(3)]  # fmt: skip

    assert main(["report", "--output-dir", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "configurations.csv").set_index("model")
    assert table.loc["cnn (cnn_fast.yaml)", "n"] == 3
    assert set(table.loc["cnn (cnn_fast.yaml)", "run_ids"].split(",")) == set(fast)
    # A row names its config file and what the run changed of it (cnn_fast.yaml: one epoch);
    # runs without a config file are told apart by the params their rows differ in.
    assert list(table.index) == [
        "cnn (cnn_fast.yaml + epochs=3)",
        "cnn (cnn_fast.yaml)",
        "cnn (epochs=1, lr=0.003)",
        "cnn (epochs=–, lr=0.02)",
        "vit",
    ]
    assert table.loc["cnn (cnn_fast.yaml + epochs=3)", "run_ids"] == longer
    assert table.loc["cnn (epochs=–, lr=0.02)", "run_ids"] == slow
    row = table.loc["cnn (cnn_fast.yaml)"]
    assert (
        row[names.TEST_ACCURACY_CI95_LOW]
        < row[names.TEST_ACCURACY]
        < row[names.TEST_ACCURACY_CI95_HIGH]
    )
    assert set(table["machine"]) == {MACHINE[names.TAG_MACHINE]}
    page = (tmp_path / "configurations.md").read_text()
    assert "Written by `python -m mnist_lab report`" in page and fast[0][:8] in page

    bench_table = pd.read_csv(tmp_path / "benchmark.csv")
    assert list(bench_table["n"]) == [3, 3] and list(bench_table["rank"]) == [1, 2]
    assert set(bench_table["run_ids"].str.split(",").sum()) == set(bench)
    pairs = pd.read_csv(tmp_path / "benchmark_significance.csv")
    assert len(pairs) == 1 and pairs.loc[0, "p_holm"] < 0.05
    text = (tmp_path / "benchmark.md").read_text()
    assert parent in text and "seeds 3" in text and "| model_a | model_b |" in text


def test_report_without_runs_says_how_to_make_some(mlflow_store, tmp_path, capsys):
    assert main(["report", "--output-dir", str(tmp_path)]) == 1
    assert "no finished train runs to report" in capsys.readouterr().err


def test_report_shows_seconds_only_for_runs_that_had_their_cores_alone(mlflow_store, tmp_path):
    rng = np.random.default_rng(1)
    client = MlflowClient()
    shares = {"0.02": "alone", "0.55": "busy"}
    for share, lr in shares.items():
        for seed in range(2):
            tags = {**MACHINE, names.TAG_OTHER_CPU_SHARE: share}
            run = scored_run("cnn", rng.random(1000) < 0.99, seed, tags=tags, lr=lr)
            client.log_metric(run, names.TRAIN_TIME_S, 10.0 + seed)
    untagged = scored_run("cnn", rng.random(1000) < 0.99, tags=MACHINE, lr="untagged")
    client.log_metric(untagged, names.TRAIN_TIME_S, 99.0)

    assert main(["report", "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "configurations.csv").set_index("model")
    by_lr = {
        lr: table.loc[next(i for i in table.index if f"lr={lr}" in i)]
        for lr in (*shares.values(), "untagged")
    }
    assert by_lr["alone"]["alone"] == "yes" and by_lr["alone"][names.TRAIN_TIME_S] == 10.5
    assert by_lr["busy"]["alone"] == "no" and np.isnan(by_lr["busy"][names.TRAIN_TIME_S])
    assert by_lr["untagged"]["alone"] == "unknown"
    assert np.isnan(by_lr["untagged"][names.TRAIN_TIME_S])


def reported_run(seed: int, lr: str, shift: float, samples: str = "500") -> str:
    """A scored cnn run whose end-of-run report logged robustness, sources and calibration:
    accuracy `shift` under the large shift at every severity, 0.9 + seed/100 elsewhere."""
    rng = np.random.default_rng(seed)
    run = scored_run("cnn", rng.random(1000) < 0.99, seed, tags=MACHINE, lr=lr)
    level = 0.9 + seed / 100
    metrics = {
        names.ROBUST_ACCURACY_MEAN: level,
        names.robust_accuracy("fog"): level,
        names.robust_accuracy("shift"): shift,
        names.source_accuracy("fonts"): level,
        names.source_accuracy("handwriting_8px"): level - 0.2,
        names.TEST_ECE: 0.01 + seed / 1000,
        names.TEST_ECE_CALIBRATED: 0.005,
    }
    for k in range(1, 6):
        metrics[f"{names.ROBUST_ACCURACY_MEAN}_severity_{k}"] = level
        metrics[f"{names.robust_accuracy('shift')}_severity_{k}"] = shift
    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run, key, value)
    client.log_param(run, "robustness_samples", samples)
    return run


def figure(rows: pd.DataFrame, name: str, severity: int | None = None) -> pd.Series:
    """The row of `name` (at `severity`, for a corruption) among a configuration's rows."""
    found = rows[rows["figure"] == name]
    if severity is not None:
        found = found[found["severity"] == severity]
    assert len(found) == 1, (name, severity)
    return found.iloc[0]


def test_report_writes_each_configurations_robustness_with_n_intervals_and_machine(
    mlflow_store, tmp_path
):
    seeds = [reported_run(s, "0.01", shift=0.98) for s in range(3)]
    single = reported_run(0, "0.02", shift=0.95)
    scored_run("cnn", np.ones(1000, bool), tags=MACHINE, lr="0.03")  # no report: not on the page

    assert main(["report", "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "robustness.csv")
    assert {frozenset(ids.split(",")) for ids in table["run_ids"]} == {
        frozenset(seeds),
        frozenset([single]),
    }
    by_config = {label: rows for label, rows in table.groupby("configuration")}
    assert len(by_config) == 2 and set(table["machine"]) == {MACHINE[names.TAG_MACHINE]}
    three = next(rows for rows in by_config.values() if (rows["n"] == 3).any())
    assert set(three.loc[three["kind"] != "clean", "n"]) == {3}
    fonts = figure(three, "fonts")
    assert fonts["mean"] == pytest.approx(0.91)  # 0.90, 0.91, 0.92 over the seeds
    assert fonts["ci95_low"] < 0.91 < fonts["ci95_high"] and fonts["interval"] == T_OVER_SEEDS
    assert fonts["digits"] == 50  # 10 digits a class of each source at 500 corrupted digits
    clean = figure(three, names.TEST_ACCURACY)
    assert clean["interval"] == T_SEEDS_DIGITS and clean["ci95_low"] < clean["mean"]
    shift = three[three["figure"] == "shift"]
    assert sorted(shift["severity"]) == [1, 2, 3, 4, 5]
    assert shift["minus_clean"].to_numpy() == pytest.approx(0.98 - clean["mean"])
    assert figure(three, "fog", 3)["mean"] == pytest.approx(0.91)
    assert len(three[three["figure"] == "fog"]) == 1  # MNIST-C's severity only
    ece = figure(three, names.TEST_ECE)
    assert ece["mean"] == pytest.approx(0.011) and ece["ci95_low"] < 0.011 < ece["ci95_high"]

    one = next(rows for rows in by_config.values() if (rows["run_ids"] == single).all())
    font = figure(one, "fonts")
    assert font["n"] == 1 and font["interval"] == WILSON
    assert (font["ci95_low"], font["ci95_high"]) == pytest.approx(wilson_interval(45, 50))
    corrupted = one[one["kind"] == "corruption"]
    assert set(corrupted["digits"]) == {500} and set(corrupted["interval"]) == {WILSON}

    page = (tmp_path / "robustness.md").read_text()
    assert (
        page.startswith("# Robustness of each configuration")
        and "Written by `python -m mnist_lab report`" in page
    )
    assert page.count("\n## cnn") == 2 and f"n = 3 seeds on {MACHINE[names.TAG_MACHINE]}" in page
    assert "| corruption | severity 1 | severity 2 | severity 3 (MNIST-C) |" in page
    assert "| MNIST-C mean | 91.00 [" in page and "| source: handwriting_8px | 3 | 71.00 [" in page
    assert "robustness.md" in regenerate.index_text(tmp_path)


def test_report_says_when_no_configuration_has_a_robustness_report(mlflow_store, tmp_path):
    scored_run("cnn", np.ones(1000, bool), tags=MACHINE)

    assert main(["report", "--output-dir", str(tmp_path)]) == 0
    assert "No configuration has a robustness report" in (tmp_path / "robustness.md").read_text()
    assert pd.read_csv(tmp_path / "robustness.csv").empty
