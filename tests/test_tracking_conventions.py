"""The MLflow and Optuna conventions users expect: a model-development experiment, readable run
names, dataset lineage on every run, and a study that names its objective."""

import tempfile

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.config import load_config
from mnist_lab.data.mnist import load_mnist, make_splits, split_records
from mnist_lab.tracking.runs import mark_model_development
from mnist_lab.train import train
from mnist_lab.tuning.space import load_space
from mnist_lab.tuning.study import open_study

TINY = {"epochs": 1, "max_train_samples": 200, "max_test_samples": 100, "val_size": 100}
NO_REPORT = {"robustness_samples": 0}


def inputs_of(run_id: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Dataset name → (digest, input tags) of a run's logged inputs."""
    run = MlflowClient().get_run(run_id)
    return {
        i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags})
        for i in run.inputs.dataset_inputs
    }


def test_a_run_is_named_tagged_and_records_the_data_it_saw(
    mnist_dir, mlflow_store, tmp_path, monkeypatch
):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = train(load_config("cnn", {**TINY, **NO_REPORT}))
    assert list(scratch.iterdir()) == []  # its checkpoint folder (and any other) went with it
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.run_name == "cnn-1ep-n200"
    assert run.data.tags[names.TAG_CONFIG] == "cnn.yaml"
    assert run.data.params["config_file"] == "experiments/cnn.yaml"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    inputs = inputs_of(result.run_id)
    assert set(inputs) == {"mnist-train", "mnist-val", "mnist-test"}
    digest, tags = inputs["mnist-train"]
    assert tags["mlflow.data.context"] == "training"
    assert tags["size"] == "200" and tags["max_train_samples"] == "200"
    assert inputs["mnist-test"][1]["mlflow.data.context"] == "testing"

    # The same data gives the same digest; another subset another one.
    again = train(load_config("cnn", {**TINY, **NO_REPORT}))
    other = train(load_config("cnn", {**TINY, **NO_REPORT, "max_train_samples": 300}))
    assert inputs_of(again.run_id)["mnist-train"][0] == digest
    assert inputs_of(other.run_id)["mnist-train"][0] != digest
    assert inputs_of(other.run_id)["mnist-val"][0] == inputs["mnist-val"][0]


def test_split_digests_follow_the_bytes(mnist_dir):
    splits = make_splits(load_mnist(mnist_dir), val_size=100, max_train_samples=100, seed=0)
    first = split_records(splits)
    assert [r.split for r in first] == ["train", "val", "test"]
    assert [r.size for r in first] == [100, 100, 10_000]
    splits.train_x[0, 0, 0] ^= 1  # one bit of one pixel
    changed = split_records(splits)
    assert changed[0].digest != first[0].digest
    assert changed[1:] == first[1:]


def test_a_user_given_run_name_is_kept(mnist_dir, mlflow_store):
    result = train(load_config("cnn", {**TINY, **NO_REPORT}), run_name="my-baseline")
    assert MlflowClient().get_run(result.run_id).info.run_name == "my-baseline"


@pytest.mark.parametrize(
    ("launcher_name", "expected"),
    [("bright-owl-123", "cnn-1ep-n200"), ("my-mlflow-run", "my-mlflow-run")],
)
def test_a_joined_launcher_run_is_renamed_only_when_mlflow_made_its_name_up(
    mnist_dir, mlflow_store, monkeypatch, launcher_name, expected
):
    client = MlflowClient()
    launched = client.create_run(client.create_experiment("launched"), run_name=launcher_name)
    run_id = launched.info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # as `mlflow run` leaves it for our code
    result = train(load_config("cnn", {**TINY, **NO_REPORT}))
    assert result.run_id == run_id
    assert client.get_run(run_id).info.run_name == expected


def test_a_study_names_its_objective(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    space = load_space("cnn")
    study = open_study(storage, "named", space, {"max_train_samples": 100, "val_size": 100})
    assert study.metric_names == [names.VAL_ACCURACY]
    # Continuing the study keeps it.
    again = open_study(storage, "named", space, {"max_train_samples": 100, "val_size": 100})
    assert again.metric_names == [names.VAL_ACCURACY]


def test_the_experiment_tag_is_set_once_and_a_users_kind_is_kept(mlflow_store):
    import mlflow

    experiment_id = mlflow.create_experiment("genai-stuff")
    client = MlflowClient()
    client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "genai_development")
    mark_model_development(experiment_id)
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == (
        "genai_development"
    )


def test_two_processes_tagging_the_experiment_at_once_both_go_on(mlflow_store, monkeypatch):
    """The second INSERT of a race (a tracking server on PostgreSQL refuses it) is no error."""
    import mlflow
    from mlflow.exceptions import MlflowException

    experiment_id = mlflow.create_experiment("raced")
    real = MlflowClient.set_experiment_tag

    def lose_the_race(self, experiment_id, key, value):
        real(self, experiment_id, key, value)  # the other process's write lands first
        raise MlflowException("duplicate key value violates unique constraint")

    monkeypatch.setattr(MlflowClient, "set_experiment_tag", lose_the_race)
    mark_model_development(experiment_id)
    tags = MlflowClient().get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
