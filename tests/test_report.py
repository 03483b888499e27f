"""`report`: results tables written from MLflow runs, each row with n, its interval and machine."""

import numpy as np
import pandas as pd
from lab_helpers import fake_run, scored_run
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.cli import main

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
