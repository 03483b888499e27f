"""`train --seeds N`: one configuration at N seeds under a parent run, scored on the same digits,
and the parent's aggregates; `split_seed` apart from `seed`; per-digit predictions per split."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab import train as train_module
from mnist_lab.analysis.predictions import PROB_COLUMNS, correct_matrix
from mnist_lab.analysis.statistics import summarize
from mnist_lab.cli import main
from mnist_lab.config import load_config
from mnist_lab.data.mnist import load_mnist

SMALL = {
    "epochs": 1,
    "max_train_samples": 300,
    "max_test_samples": 200,
    "val_size": 100,
    "robustness_samples": 20,
}


def flags(settings: dict) -> list[str]:
    return [part for k, v in settings.items() for part in (f"--{k.replace('_', '-')}", str(v))]


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory, mnist_dir_module):
    """`train --seeds 2` on a tiny subset, in a module-wide store: the parent and its runs."""
    from lab_helpers import sqlite_store

    with sqlite_store(tmp_path_factory.mktemp("seeds")):
        assert main(["train", "--model", "cnn", *flags(SMALL), "--seeds", "2"]) == 0
        client = MlflowClient()
        experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id
        (parent,) = client.search_runs([experiment], "tags.kind = 'repeats'")
        children = client.search_runs(
            [experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        frames = {
            (c.data.params["seed"], split): tracking.read_predictions(c.info.run_id, split)
            for c in children
            for split in ("val", "test")
        }
        yield parent, sorted(children, key=lambda c: c.data.params["seed"]), frames


@pytest.fixture(scope="module")
def mnist_dir_module():
    import os
    from pathlib import Path

    value = os.environ.get("MNIST_DATA_DIR")
    if not value or not (Path(value) / "MNIST" / "raw").is_dir():
        pytest.skip("MNIST_DATA_DIR is not set to a folder holding MNIST/raw/: real-MNIST test")
    return Path(value)


def test_the_seeds_are_child_runs_of_one_configuration(seeds_run):
    parent, children, _ = seeds_run
    assert parent.info.status == "FINISHED" and parent.data.params["seeds"] == "2"
    assert [c.data.params["seed"] for c in children] == ["0", "1"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags[names.TAG_KIND] == "train"
        assert child.data.tags[names.TAG_REPEATS_RUN_ID] == parent.info.run_id
        assert child.data.params["split_seed"] == "0"
        assert child.data.tags[names.TAG_MACHINE] == parent.data.tags[names.TAG_MACHINE]
        precision = child.data.params[names.PARAM_PRECISION]
        assert precision == parent.data.params[names.PARAM_PRECISION] in ("bf16", "fp32")
        low = child.data.metrics[names.TEST_ACCURACY_CI95_LOW]
        high = child.data.metrics[names.TEST_ACCURACY_CI95_HIGH]
        assert low < child.data.metrics[names.TEST_ACCURACY] < high
    assert (
        children[0].data.metrics[names.TEST_ACCURACY]
        != pytest.approx(children[1].data.metrics[names.TEST_ACCURACY], abs=1e-9)
        or children[0].data.metrics[names.TEST_LOSS] != children[1].data.metrics[names.TEST_LOSS]
    )


def test_the_parent_logs_mean_std_and_an_interval_over_seeds_and_digits(seeds_run):
    parent, children, frames = seeds_run
    metrics = parent.data.metrics
    assert metrics[names.N_SEEDS] == 2
    accuracies = [c.data.metrics[names.TEST_ACCURACY] for c in children]
    assert metrics["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert metrics["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    expected = summarize(correct_matrix([frames["0", "test"], frames["1", "test"]]))
    assert metrics["test_accuracy_ci95_low"] == pytest.approx(expected.low)
    assert metrics["test_accuracy_ci95_high"] == pytest.approx(expected.high)
    for metric in (names.ROBUST_ACCURACY_MEAN, names.TEST_ECE):
        values = [c.data.metrics[metric] for c in children]
        assert metrics[f"{metric}_mean"] == pytest.approx(np.mean(values))
        assert metrics[f"{metric}_ci95_low"] <= np.mean(values) <= metrics[f"{metric}_ci95_high"]


def test_every_seed_is_scored_on_the_same_digits_with_what_its_model_serves(seeds_run):
    _, children, frames = seeds_run
    for split, size in (("val", 100), ("test", 200)):
        a, b = frames["0", split], frames["1", split]
        assert len(a) == size and np.array_equal(a["index"], b["index"])
        assert np.allclose(a[PROB_COLUMNS].sum(axis=1), 1, atol=1e-5)
    mnist = load_mnist()
    test = frames["0", "test"]
    labels = mnist.test_labels[torch.from_numpy(test["index"].to_numpy().copy())]
    assert np.array_equal(test["label"], labels.numpy())
    run = children[0]
    right = (test["prediction"] == test["label"]).mean()
    assert right == pytest.approx(run.data.metrics[names.TEST_ACCURACY], abs=2 / 200)  # bf16
    model = mlflow.pyfunc.load_model(tracking.run_model_uri(run.info.run_id))
    index = torch.from_numpy(test["index"].to_numpy()[:32].copy())
    digits = mnist.test_images[index].float().div(255).numpy()
    served = model.predict(digits)[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(served, test[PROB_COLUMNS].to_numpy()[:32], atol=1e-4)


def test_compare_groups_the_seeds_into_one_row(seeds_run, tmp_path):
    parent, _, _ = seeds_run
    assert main(["compare", "--output-dir", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "comparison.csv")
    assert list(table["n"]) == [2]
    assert table.loc[0, names.TEST_ACCURACY_CI95_LOW] == pytest.approx(
        parent.data.metrics["test_accuracy_ci95_low"]
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seeds", "0"], "seeds=0 must be >= 1"),
        (["--seeds", "x"], "seeds='x' is not a valid int"),
        (["--seeds", "2", "--resume", "abc"], "does not combine with --resume"),
        (["--seeds", "2", "--nproc-per-node", "2"], "does not combine with --nproc-per-node"),
    ],
)
def test_bad_seeds_exit_1_before_anything_runs(mlflow_store, capsys, extra, message):
    assert main(["train", "--model", "cnn", *extra]) == 1
    assert message in capsys.readouterr().err
    assert not MlflowClient().search_runs(["0"])


def test_split_seed_draws_the_split_and_seed_the_training():
    a = train_module.load_splits(load_config("cnn", {**SMALL, "seed": 5}))
    b = train_module.load_splits(load_config("cnn", {**SMALL, "seed": 6}))
    c = train_module.load_splits(load_config("cnn", {**SMALL, "split_seed": 1}))
    assert torch.equal(a.val_index, b.val_index) and torch.equal(a.test_index, b.test_index)
    assert not torch.equal(a.val_index, c.val_index)


def test_runs_in_bf16_and_in_fp32_are_two_configurations():
    """Precision separates configurations; a run logged with only the precision tag (before
    the param) joins the configuration its tag names."""

    def record(run_id: str, seed: int, params: dict, tags: dict) -> tracking.RunRecord:
        given = {"seed": str(seed), "lr": "0.01", **params}
        return tracking.RunRecord(run_id, "cnn", "FINISHED", 0, {}, given, tags)

    runs = [
        record("a", 0, {names.PARAM_PRECISION: "bf16"}, {}),
        record("b", 1, {names.PARAM_PRECISION: "bf16"}, {}),
        record("c", 0, {names.PARAM_PRECISION: "fp32"}, {}),
        record("d", 1, {}, {names.TAG_PRECISION: "fp32"}),
        record("e", 0, {}, {}),
    ]
    groups = [[run.run_id for run in group] for group in tracking.by_configuration(runs)]
    assert groups == [["a", "b"], ["c", "d"], ["e"]]
