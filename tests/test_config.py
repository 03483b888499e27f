"""Config: YAML defaults, overrides, type coercion, and every range check names its parameter."""

import pytest

from mnist_lab.config import PROJECT_ROOT, TrainConfig, build_config, load_config
from mnist_lab.errors import ConfigError


def test_yaml_defaults_then_overrides():
    config = load_config("vit", {"epochs": "2", "patch_size": "4", "lr": None})
    assert config.model == "vit"
    assert config.epochs == 2
    assert config.model_options["patch_size"] == 4
    assert config.lr == load_config("vit").lr  # None means "keep the YAML value"


def test_params_are_flat_and_complete():
    params = load_config("cnn").to_params()
    assert {"model", "epochs", "lr", "batch_size", "seed", "depth", "width"} <= set(params)
    assert "model_options" not in params


def test_round_trip_through_dict():
    config = load_config("vit", {"dim": 32, "heads": 4})
    assert build_config(config.to_dict()) == config


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'.*cnn.*vgg16.*alexnet.*vit"):
        load_config("resnet")


@pytest.mark.parametrize(
    ("model", "overrides", "named"),
    [
        ("cnn", {"lr": 0}, "lr"),
        ("cnn", {"lr": -1e-3}, "lr"),
        ("cnn", {"epochs": 0}, "epochs"),
        ("cnn", {"batch_size": 0}, "batch_size"),
        ("cnn", {"depth": 5}, "depth"),
        ("cnn", {"dropout": 1.5}, "dropout"),
        ("cnn", {"optimizer": "adam9"}, "optimizer"),
        ("cnn", {"max_train_samples": 3}, "max_train_samples"),
        ("vit", {"patch_size": 5}, "patch_size"),
        ("vit", {"dim": 30, "heads": 4}, "dim"),
        ("vgg16", {"input_size": 64}, "input_size"),
        ("vgg16", {"weights": "/no/such/file.pth"}, "weights"),
        ("cnn", {"epochs": "three"}, "epochs"),
        ("cnn", {"augment": "maybe"}, "augment"),
        ("cnn", {"augment": "shift,tilt"}, r"augment=.*'tilt'.*valid values: true, false"),
        ("cnn", {"augment": "blur:100"}, r"augment=.*blur magnitude"),
        ("cnn", {"augment": 2.5}, "augment"),
        ("cnn", {"target_val_accuracy": 99.2}, r"target_val_accuracy=99.2 must be a fraction"),
        ("cnn", {"val_checks_per_epoch": 0}, "val_checks_per_epoch"),
        (
            "cnn",
            {"compile": True, "compile_mode": "fast"},
            r"compile_mode='fast' must be one of .*reduce-overhead",
        ),
        ("cnn", {"compile_mode": "reduce-overhead"}, r"needs compile: true \(add --compile\)"),
    ],
)
def test_bad_values_are_rejected_naming_the_parameter(model, overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config(model, overrides)


def test_option_of_another_model_is_rejected():
    with pytest.raises(ConfigError, match=r"'patch_size' is not a setting of model 'cnn'"):
        load_config("cnn", {"patch_size": 7})


def test_strings_from_flags_are_coerced():
    config = load_config("cnn", {"augment": "true", "lr": "1e-3", "max_test_samples": "100"})
    assert config.augment is True and config.lr == 1e-3 and config.max_test_samples == 100


def test_timm_models_take_the_shared_yaml():
    config = load_config("timm:resnet18", {"epochs": 1})
    assert isinstance(config, TrainConfig) and config.model == "timm:resnet18"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("yes", True),
        (1, True),
        (False, False),
        ("none", False),
        (0, False),
        ("affine", "affine"),  # a preset, logged as given
        ("blur", "blur"),  # kept as given, see test_augment_is_kept_as_given
        ("noise:0.1,shift", "noise:0.1,shift"),
    ],
)
def test_augment_is_canonical_and_backwards_compatible(value, expected):
    config = load_config("cnn", {"augment": value})
    assert config.augment == expected and type(config.augment) is type(expected)
    assert build_config(config.to_dict()) == config  # checkpoints and MLflow params round-trip
    params = {**config.to_params(), "augment": str(config.augment)}  # MLflow logs strings
    assert build_config(params).to_params() == config.to_params()


def test_augment_is_kept_as_given_so_mlflow_run_params_match():
    """`mlflow run -P augment=robust` logs "robust" first; the run must log the same."""
    assert load_config("cnn", {"augment": "robust"}).augment == "robust"
    assert load_config("cnn", {"augment": " blur:2.5,shift:1 "}).augment == "blur:2.5,shift:1"
    assert load_config("cnn", {"augment": "true"}).augment is True


def write(path, text: str):
    path.write_text(text)
    return path


def test_a_run_config_layers_over_the_models_yaml_and_flags_over_it(tmp_path):
    preset = write(tmp_path / "vit_small.yaml", "# a test preset\nmodel: vit\ndim: 32\nepochs: 2\n")
    config = load_config(None, {"epochs": 3, "lr": None}, config_file=preset)
    assert config.model == "vit"
    assert config.model_options["dim"] == 32  # the preset's
    assert config.epochs == 3  # the flag's
    assert config.augment == load_config("vit").augment  # experiments/vit.yaml's
    assert config.config_file == str(preset)
    assert load_config("vit", config_file=preset).model_options["dim"] == 32


def test_a_run_config_without_model_is_the_given_models_or_cnn(tmp_path):
    preset = write(tmp_path / "short.yaml", "epochs: 1\n")
    assert load_config(None, config_file=preset).model == "cnn"
    assert load_config("alexnet", config_file=preset).model == "alexnet"


def test_a_missing_run_config_names_the_path_and_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"--config .*nope\.yaml: no such file.*cnn_fast\.yaml"):
        load_config(None, config_file=tmp_path / "nope.yaml")


def test_an_unknown_key_in_a_run_config_names_the_file_and_the_key(tmp_path):
    preset = write(tmp_path / "typo.yaml", "model: cnn\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: 'epoch' is not a setting of model 'cnn'"):
        load_config(None, config_file=preset)
    bad_value = write(tmp_path / "bad.yaml", "model: cnn\nepochs: many\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: epochs='many' is not a valid int"):
        load_config(None, config_file=bad_value)


def test_model_and_a_run_config_for_another_model_is_an_error(tmp_path):
    preset = write(tmp_path / "v.yaml", "model: vit\n")
    with pytest.raises(ConfigError, match=r"--model cnn but .*v\.yaml is a config for model 'vit'"):
        load_config("cnn", config_file=preset)


def test_train_with_a_bad_config_exits_1_before_any_run(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from mnist_lab.cli import main

    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: no such file" in capsys.readouterr().err
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    assert not experiments or not client.search_runs(experiments)


def test_a_users_own_experiments_and_tuning_folders_come_first(tmp_path, monkeypatch):
    from mnist_lab.tuning.space import space_file
    from mnist_lab.tuning.tune_options import DEFAULT_STORAGE

    monkeypatch.chdir(tmp_path)  # an empty folder: the shipped files
    shipped = load_config("cnn")
    assert shipped.config_file == "experiments/cnn.yaml" and shipped.augment
    assert load_config(None, config_file="experiments/cnn_fast.yaml").epochs == 1
    assert space_file("cnn").read_text() == (PROJECT_ROOT / "tuning" / "cnn.yaml").read_text()
    assert DEFAULT_STORAGE == "sqlite:///optuna.db"  # relative: the working folder
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "cnn.yaml").write_text("epochs: 7\n")
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "cnn.yaml").write_text("params: {}\n")
    own = load_config("cnn")
    assert own.epochs == 7 and not own.augment  # the user's file alone, not layered on ours
    assert own.config_file == str(tmp_path / "experiments" / "cnn.yaml")
    assert space_file("cnn") == tmp_path / "tuning" / "cnn.yaml"
