"""Robustness: the evaluation over corruptions, its figures, and the `robustness` command that
evaluates a logged model into its own run (CLI and `mlflow run`)."""

import math
import subprocess
import sys

import pytest
import torch
from lab_helpers import fake_run, venv_env
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.analysis.corruptions import (
    CORRUPTIONS,
    DEFAULT_SEVERITY,
    SEVERITIES,
    corruption_names,
)
from mnist_lab.analysis.robustness import (
    RobustnessResult,
    corruptions_figure,
    evaluate_robustness,
    robustness_figure,
)
from mnist_lab.cli import main
from mnist_lab.config import PROJECT_ROOT, load_config
from mnist_lab.errors import ConfigError
from mnist_lab.serving.robustness_run import parse_severities
from mnist_lab.train import train


def ink_counter(x: torch.Tensor) -> torch.Tensor:
    """A 'model' that answers 1 when the centre of the image is bright, else 0: [B, 10]."""
    centre = x[:, 0, 10:18, 10:18].mean(dim=(1, 2))
    scores = torch.zeros(len(x), 10)
    scores[:, 1] = centre
    scores[:, 0] = 0.25
    return scores


def test_evaluation_counts_hits_per_corruption_and_severity() -> None:
    images = torch.zeros(40, 1, 28, 28)
    images[:20, :, 8:20, 8:20] = 1.0  # first half: a bright square in the centre → label 1
    labels = torch.tensor([1] * 20 + [0] * 20)
    result = evaluate_robustness(ink_counter, images, labels, severities=(1, 5), batch_size=16)
    assert result.clean_accuracy == 1.0
    assert set(result.accuracy) == set(CORRUPTIONS)
    assert all(set(levels) == {1, 5} for levels in result.accuracy.values())
    # Brightness lifts the black background above the 0.25 threshold: every 0 becomes a 1.
    assert result.accuracy["brightness"][5] == pytest.approx(0.5)
    metrics = result.metrics(5)
    assert metrics[names.robust_accuracy("brightness")] == pytest.approx(0.5)
    mean = sum(acc[5] for acc in result.accuracy.values()) / len(CORRUPTIONS)
    assert metrics[names.ROBUST_ACCURACY_MEAN] == pytest.approx(mean)
    assert metrics[names.ROBUST_ERROR_RATIO] == float("inf")  # no clean error to divide by
    report = result.to_report()
    assert report["severities"] == [1, 5] and len(report["worst"]) == 3


def test_passes_across_corruptions_count_each_corruptions_own_hits() -> None:
    """The model reads corrupted digits in passes that span corruptions (a few digits each);
    every corruption and severity still gets exactly its own digits' hits, and no pass holds
    more than the batch."""
    from mnist_lab.analysis.corruptions import corrupt

    # A square of a different brightness on each digit: the corruptions push some of them
    # across ink_counter's threshold and not others, so each corruption has hits of its own.
    images = torch.zeros(7, 1, 28, 28)
    for i, ink in enumerate(torch.linspace(0.05, 0.6, 7)):
        images[i, :, 9:19, 9:19] = ink
    labels = torch.tensor([0, 0, 1, 0, 1, 1, 1])
    passes: list[int] = []

    def counting(x: torch.Tensor) -> torch.Tensor:
        passes.append(len(x))
        return ink_counter(x)

    result = evaluate_robustness(counting, images, labels, severities=(2, 4), seed=3, batch_size=5)
    assert max(passes) <= 5 and sum(passes) == 7 * (1 + 2 * len(CORRUPTIONS))
    # The clean pass's 2, then 7 × 30 corrupted digits in full passes of 5 (not 5 + 2 each).
    assert len(passes) == 2 + math.ceil(7 * 2 * len(CORRUPTIONS) / 5)
    for name in CORRUPTIONS:
        for severity in (2, 4):
            hits = 0
            for k, i in enumerate(range(0, 7, 5)):  # as the evaluation makes them: seed 3 + k
                corrupted = corrupt(images[i : i + 5], name, severity, seed=3 + k)
                hits += int((ink_counter(corrupted).argmax(1) == labels[i : i + 5]).sum())
            assert result.accuracy[name][severity] == hits / 7, (name, severity)
    assert len({a for levels in result.accuracy.values() for a in levels.values()}) > 2


def test_error_ratio_is_corrupted_error_over_clean_error() -> None:
    result = RobustnessResult(
        clean_accuracy=0.9, accuracy={"fog": {3: 0.7}, "rotate": {3: 0.5}}, samples=10, seconds=1
    )
    assert result.metrics(3)[names.ROBUST_ERROR_RATIO] == pytest.approx(0.4 / 0.1)
    assert result.worst(1, 3) == ["rotate"]


def test_the_mean_is_mnist_cs_and_the_shifts_are_graded_beside_it() -> None:
    accuracy = {c: {1: 0.9, 3: 0.8} for c in CORRUPTIONS}
    accuracy |= {"shift": {1: 0.5, 3: 0.1}, "border_cut": {1: 0.4, 3: 0.2}}
    result = RobustnessResult(0.99, accuracy, 100, 1.0)
    assert result.mean_accuracy(3) == pytest.approx(0.8)
    metrics = result.metrics(3)
    assert metrics[names.ROBUST_ACCURACY_MEAN] == pytest.approx(0.8)
    assert metrics[names.robust_accuracy("shift")] == 0.1
    graded = result.graded_metrics()
    assert graded["robust_accuracy_mean_severity_1"] == pytest.approx(0.9)
    assert graded["robust_accuracy_shift_severity_1"] == 0.5
    assert graded["robust_accuracy_border_cut_severity_3"] == 0.2
    assert RobustnessResult(0.99, {"fog": {3: 0.5}}, 10, 1.0).graded_metrics() == {}


def test_figures_render(tmp_path) -> None:
    digit = torch.zeros(1, 28, 28)
    digit[0, 6:22, 12:16] = 1.0
    grid = corruptions_figure(digit, severities=(1, DEFAULT_SEVERITY, 5))
    (mosaic,) = (
        grid.axes
    )  # one image: a column per corruption after the clean digit, a row per severity
    columns = [label.get_text() for label in mosaic.get_xticklabels()]
    assert columns == ["clean", *(name.replace("_", " ") for name in corruption_names())]
    assert [label.get_text() for label in mosaic.get_yticklabels()] == [
        f"severity {s}" for s in (1, DEFAULT_SEVERITY, 5)
    ]
    assert mosaic.get_images()[0].get_array().shape == (3 * 32, len(columns) * 32)
    accuracy = {c: {s: 1 - 0.1 * s for s in SEVERITIES} for c in corruption_names()}
    result = RobustnessResult(0.99, accuracy, 100, 1.0)
    bars = robustness_figure(result)
    bars.savefig(tmp_path / "robustness.png")
    assert (tmp_path / "robustness.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("text", "levels"), [("3", (3,)), ("1,3,5", (1, 3, 5)), ("1..5", (1, 2, 3, 4, 5))]
)
def test_severities_spellings(text, levels) -> None:
    assert parse_severities(text) == levels


@pytest.mark.parametrize("text", ["0", "6", "x", "5..1", ""])
def test_bad_severities_name_the_setting(text) -> None:
    with pytest.raises(ConfigError, match="severities"):
        parse_severities(text)


def test_negative_robustness_samples_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="robustness_samples"):
        load_config("cnn", {"robustness_samples": -1})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "exactly one of --run-id"),
        (["--run-id", "a", "--model-uri", "b"], "exactly one of --run-id"),
        (["--run-id", "nope"], "run 'nope' is not in the tracking store"),
        (["--model-uri", "runs:/nope/model", "--samples", "0"], "samples=0 must be >= 1"),
        (["--run-id", "x", "--severities", "9"], "severities"),
    ],
)
def test_bad_robustness_input_exits_1(mlflow_store, capsys, argv, message) -> None:
    assert main(["robustness", *argv]) == 1
    assert message in capsys.readouterr().err


def test_a_run_without_a_model_is_named(mlflow_store, capsys) -> None:
    run_id = fake_run("mnist-lab", "cnn", {names.VAL_ACCURACY: 0.9}, tags={"kind": "train"})
    assert main(["robustness", "--run-id", run_id]) == 1
    err = capsys.readouterr().err
    assert run_id in err and "has no logged model" in err


@pytest.mark.slow
def test_robustness_of_a_logged_model_is_its_own_run(mnist_dir, mlflow_store, tmp_path) -> None:
    small = {"epochs": 1, "max_train_samples": 500, "max_test_samples": 100, "val_size": 100}
    trained = train(load_config("cnn", {**small, "robustness_samples": 50}))
    assert main(["-q", "robustness", "--run-id", trained.run_id, "--samples", "50"]) == 0
    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_run(trained.run_id).info.experiment_id], "tags.kind = 'robustness'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_SOURCE_RUN_ID] == trained.run_id
    assert run.data.tags[names.TAG_MODEL] == "cnn"
    # The same metric names as the train run, so MLflow lines the two up.
    robust = {k for k in client.get_run(trained.run_id).data.metrics if k.startswith("robust")}
    assert robust <= set(run.data.metrics)
    # Graded severities through `mlflow run`: the curve as robust_accuracy_mean_severity_<k>.
    env = venv_env(MLFLOW_TRACKING_URI=mlflow_store, MNIST_DATA_DIR=str(mnist_dir))
    command = [sys.executable, "-m", "mlflow", "run", str(PROJECT_ROOT), "-e", "robustness"]
    command += ["-P", f"run_id={trained.run_id}", "-P", "samples=30", "-P", "severities=1..3"]
    command += ["--env-manager", "local", "--experiment-name", "robust"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    (launched,) = client.search_runs([client.get_experiment_by_name("robust").experiment_id])
    assert launched.data.tags[names.TAG_SOURCE_RUN_ID] == trained.run_id
    graded = {f"robust_accuracy_mean_severity_{k}" for k in (1, 2, 3)}
    assert graded | {names.ROBUST_ACCURACY_MEAN} <= set(launched.data.metrics)
    assert launched.data.params["severities"] == "1..3"
