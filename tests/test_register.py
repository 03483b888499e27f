"""register: best run by validation accuracy → mnist-<model>; champion moves only when beaten.

Runs here are fakes with a tiny logged model (no training); the same scenario runs on a SQLite
store and against a real `mlflow server` on 127.0.0.1.
"""

import mlflow
import numpy as np
import pytest
import torch
from lab_helpers import new_server_store, tracking_server
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab.analysis.predictions import predictions_frame
from mnist_lab.cli import main
from mnist_lab.errors import LabError
from mnist_lab.models.build import ModelSpec


def frame_of(right: np.ndarray):
    """A predictions frame right exactly where `right` says (digit k has label k % 10)."""
    labels = np.arange(len(right)) % 10
    guesses = np.where(right, labels, (labels + 1) % 10)
    return predictions_frame(np.arange(len(right)), labels, guesses, np.eye(10)[guesses])


def first_right(accuracy: float, digits: int = 1000) -> np.ndarray:
    return np.arange(digits) < round(accuracy * digits)


def logged_run(
    experiment: str, val_accuracy: float, test_accuracy: float, monkeypatch, predictions=True
) -> str:
    """A finished cnn `train` run with these metrics and a real (untrained) logged model; its
    predictions on 1000 digits right on the first `accuracy` share of them."""
    import mlflow

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)  # what `register` reads
    mlflow.set_experiment(experiment)  # an earlier test's active experiment must not win
    torch.manual_seed(0)
    spec = ModelSpec("cnn", {"depth": 1, "width": 2})
    tiny = spec.build()
    with tracking.run(tags={names.TAG_KIND: "train", names.TAG_MODEL: "cnn"}) as active:
        tracking.log_metrics(
            {names.BEST_VAL_ACCURACY: val_accuracy, names.TEST_ACCURACY: test_accuracy}
        )
        tracking.log_model(tiny, torch.rand(2, 28, 28).numpy(), spec)
        if predictions:
            tracking.log_predictions(
                {"val": frame_of(first_right(val_accuracy)),
                 "test": frame_of(first_right(test_accuracy))}
            )  # fmt: skip
    return active.info.run_id


def register(capsys, *extra) -> str:
    assert main(["register", "--model", "cnn", *extra]) == 0
    return capsys.readouterr().out


def champion_run() -> str:
    return MlflowClient().get_model_version_by_alias("mnist-cnn", "champion").run_id


def check_champion_logic(monkeypatch, capsys) -> None:
    """The whole story, on whatever store MLFLOW_TRACKING_URI points at."""
    a = logged_run("week1", 0.90, 0.91, monkeypatch)
    out = register(capsys)
    assert f"registered run {a}" in out and "mnist-cnn version 1" in out
    assert "is now @champion: there was no champion yet" in out
    assert champion_run() == a
    version = MlflowClient().get_model_version("mnist-cnn", "1")
    assert version.tags["run_id"] == a
    assert float(version.tags[names.BEST_VAL_ACCURACY]) == pytest.approx(0.90)
    assert float(version.tags[names.TEST_ACCURACY]) == pytest.approx(0.91)

    # The best by validation accuracy (never by test accuracy), then tested on the test digits.
    b = logged_run("week1", 0.95, 0.95, monkeypatch)
    logged_run("week1", 0.93, 0.99, monkeypatch)
    out = register(capsys)
    assert f"registered run {b}" in out and "version 2" in out and "it beats version 1" in out
    assert "40 right only by the challenger, 0 only by the champion" in out
    assert champion_run() == b

    # The champion's run again: nothing new.
    out = register(capsys)
    assert "already is the champion; nothing registered" in out
    assert len(MlflowClient().search_model_versions("name = 'mnist-cnn'")) == 2

    # Another experiment's best scores as the champion on the test digits: a tie, it stays.
    c = logged_run("week2", 0.94, 0.95, monkeypatch)
    out = register(capsys)
    assert f"registered run {c}" in out and "version 3" in out
    assert "is not @champion: a tie: it cannot be told apart from version 2" in out
    assert "--force" in out and champion_run() == b

    out = register(capsys, "--force")
    assert "version 4" in out and "is now @champion: --force given" in out
    assert champion_run() == c


def test_champion_logic_on_sqlite(mlflow_store, monkeypatch, capsys):
    check_champion_logic(monkeypatch, capsys)


@pytest.mark.slow
def test_champion_logic_on_a_tracking_server(tmp_path, monkeypatch, capsys):
    with tracking_server(tmp_path, new_server_store(tmp_path / "server.db"), monkeypatch):
        check_champion_logic(monkeypatch, capsys)
    # The artifacts went through the server, not to the local disk.
    assert not (tmp_path / "mlruns").exists()
    assert any((tmp_path / "artifacts").rglob("MLmodel"))


@pytest.mark.slow
def test_champion_logic_on_a_tracking_server_backed_by_postgres(
    tmp_path, monkeypatch, capsys, postgres_db
):
    with tracking_server(tmp_path, postgres_db(), monkeypatch):
        check_champion_logic(monkeypatch, capsys)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("resnet", "unknown model 'resnet'; valid models: cnn"),
        ("vit", "no finished vit train run with a validation accuracy in experiment 'mnist-lab'"),
    ],
)
def test_bad_register_input_exits_1(mlflow_store, capsys, model, message):
    assert main(["register", "--model", model]) == 1
    assert message in capsys.readouterr().err


def scored_run(
    experiment: str, right: np.ndarray, monkeypatch, seed: int = 0, lr: str = "3e-3", test=None
) -> str:
    """A logged cnn run whose validation predictions are right exactly where `right` says, and
    its test predictions where `test` says (default: `right`)."""
    run_id = logged_run(experiment, float(right.mean()), 0.9, monkeypatch, predictions=False)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params({"seed": seed, "lr": lr, "val_size": len(right)})
        test = right if test is None else test
        tracking.log_predictions({"val": frame_of(right), "test": frame_of(test)})
    return run_id


def version_tags(version: str) -> dict[str, str]:
    return MlflowClient().get_model_version("mnist-cnn", version).tags


def test_champion_moves_only_when_beaten_beyond_noise_on_the_test_digits(
    mlflow_store, monkeypatch, capsys
):
    base = np.array([True] * 900 + [False] * 100)
    champion = scored_run("exp", base, monkeypatch)
    register(capsys)
    assert champion_run() == champion

    # Far better on validation (where it was chosen), 6 digits better and 3 worse on the test
    # digits (one-sided McNemar p = P(X >= 6 | 9) = 0.254): a tie.
    close = base.copy()
    close[900:906], close[:3] = True, False
    challenger = scored_run("exp", base | True, monkeypatch, seed=1, lr="1e-2", test=close)
    out = register(capsys)
    assert f"registered run {challenger}" in out and "is not @champion: a tie" in out
    assert "on the same 1000 test digits, which no choice touched: 6 right only by the " in out
    assert "p = 0.254 (challenger better)" in out and "cannot be told apart" in out
    assert champion_run() == champion
    tags = version_tags("2")
    assert tags["promotion_decision"] == "kept the champion"
    assert tags["promotion_outcome"] == "tie"
    assert float(tags["promotion_p_value"]) == pytest.approx(130 / 512, abs=1e-4)
    assert tags["promotion_test"] == "McNemar exact, one-sided, paired, test digits"
    assert "one-sided exact McNemar" in tags["promotion_rule"]

    # Chosen on validation, clearly worse on the test digits (10 better, 60 worse): worse.
    worse = base.copy()
    worse[900:910], worse[:60] = True, False
    scored_run("exp", base | True, monkeypatch, seed=3, lr="3e-2", test=worse)
    out = register(capsys)
    assert "is not @champion: version 1 (run" in out and "is better beyond noise" in out
    assert version_tags("3")["promotion_outcome"] == "worse"

    # 12 better, 2 worse: P(X >= 12 | 14) = 106 / 16384 = 0.0065: promoted.
    clear = base.copy()
    clear[900:912], clear[:2] = True, False
    winner = scored_run("exp", base | True, monkeypatch, seed=2, lr="2e-2", test=clear)
    out = register(capsys)
    assert "is now @champion: it beats version 1" in out and "p = 0.00647" in out
    assert champion_run() == winner and version_tags("4")["promotion_decision"] == "promoted"


def test_best_configuration_is_chosen_by_its_mean_over_seeds(mlflow_store, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    lucky = [scored_run("exp", rng.random(500) < a, monkeypatch, s, "1e-2")
             for s, a in enumerate((0.97, 0.88, 0.88))]  # fmt: skip
    steady = [scored_run("exp", rng.random(500) < 0.93, monkeypatch, s, "3e-3") for s in range(3)]
    out = register(capsys)
    assert lucky[0] not in out and any(f"registered run {r}" in out for r in steady)


@pytest.mark.parametrize(
    ("champion_predictions", "challenger_digits", "why"),
    [
        (False, 1000, "the champion logged no test predictions"),
        (True, 500, "the two were scored on different test digits (500 and 1000"),
    ],
)
def test_no_test_keeps_the_champion_and_tags_no_p_value(
    mlflow_store, monkeypatch, capsys, champion_predictions, challenger_digits, why
):
    champion = logged_run("exp", 0.90, 0.90, monkeypatch, predictions=champion_predictions)
    register(capsys)
    better = np.arange(challenger_digits) < 0.99 * challenger_digits
    scored_run("exp", better, monkeypatch, seed=1)
    out = register(capsys)
    assert f"is not @champion: no test could be run against version 1 (run {champion}): " in out
    assert why in out and "--force" in out and champion_run() == champion
    tags = version_tags("2")
    assert tags["promotion_outcome"] == "no test"
    assert "promotion_p_value" not in tags and "promotion_test" not in tags


def test_a_champion_whose_run_is_gone_means_no_test(mlflow_store, monkeypatch, capsys):
    champion = logged_run("exp", 0.90, 0.90, monkeypatch)
    register(capsys)
    scored_run("exp", first_right(0.99), monkeypatch, seed=1)
    get_run = tracking.get_run

    def gone(run_id: str):  # as after `mlflow gc` of a deleted run
        if run_id == champion:
            raise LabError(f"run {run_id} not found")
        return get_run(run_id)

    monkeypatch.setattr(tracking, "get_run", gone)
    out = register(capsys)
    assert f"the champion's run {champion} is gone (deleted)" in out
    assert champion_run() == champion
