"""`measure sources`: two configurations' runs compared per source, paired on the digits."""

from pathlib import Path

import numpy as np


def test_sources_compares_two_configurations_per_source_paired_on_the_digits():
    """A known truth: the first configuration reads 5 of every 100 digits more than the
    second (the same digits at every seed) on one source and the same digits on the other."""
    from mnist_lab.measure import source_comparison as sources

    rng = np.random.default_rng(0)
    base = rng.random((3, 1000)) < 0.9
    base[:, :50] = False  # 50 digits no seed of the second configuration reads …
    better = base.copy()
    better[:, :50] = True  # … every seed of the first does
    runs = {"handwriting_8px": better, "fonts": base[::-1].copy()}
    against = {"handwriting_8px": base, "fonts": base}
    gain, same = sources.compare(runs, against)
    assert gain["source"] == "handwriting_8px" and gain["n"] == 1000
    assert gain["difference"].startswith("+5.00 [") and gain["verdict"] == "better"
    assert gain["p_value"] < 0.01
    assert same["difference"].startswith("+0.00 [") and same["verdict"] == "tie"


def test_sources_refuses_a_run_without_a_logged_model(mlflow_store, capsys):
    import mlflow

    from mnist_lab.measure import source_comparison as sources

    with mlflow.start_run() as run:
        pass
    ids = [run.info.run_id]
    assert sources.main(["--runs", *ids, "--against", *ids]) == 1
    assert f"run {ids[0]} logged no model 'model'" in capsys.readouterr().err


def test_a_runs_model_is_found_in_its_own_experiment_not_only_the_active_one(
    mlflow_store, tmp_path
):
    """`train` logs to the `mnist-lab` experiment; a later process's active experiment is the
    default one, and MLflow's logged-model search looks only there unless told the run's."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from mnist_lab import names
    from mnist_lab.tracking.query import logged_model_folder

    client = MlflowClient()
    experiment = client.create_experiment("elsewhere")
    run = client.create_run(experiment)
    model = client.create_logged_model(
        experiment, name=names.MODEL_ARTIFACT, source_run_id=run.info.run_id
    )
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "spec.json").write_text("{}")
    client.log_model_artifacts(model.model_id, str(tmp_path / "weights"))
    mlflow.set_experiment("Default")
    folder = logged_model_folder(run.info.run_id)
    assert folder is not None and (Path(folder) / "spec.json").read_text() == "{}"
    assert logged_model_folder(client.create_run(experiment).info.run_id) is None
