"""The CLI as a user meets it: bad input gets a clear message, exit 1 and no run; `mlflow run`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.cli import main
from mnist_lab.config import PROJECT_ROOT, load_config

TINY = [
    "--epochs",
    "1",
    "--max-train-samples",
    "200",
    "--max-test-samples",
    "100",
    "--val-size",
    "100",
]


def runs_in_store() -> list:
    client = MlflowClient()
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet"], "unknown model 'resnet'; valid models: cnn, vgg16, alexnet, vit"),
        (["--model", "cnn", "--lr", "0"], "lr=0.0 must be > 0"),
        (["--model", "cnn", "--lr", "-1"], "lr=-1.0 must be > 0"),
        (["--model", "cnn", "--epochs", "0"], "epochs=0 must be >= 1"),
        (["--model", "cnn", "--batch-size", "0"], "batch_size=0 must be >= 1"),
        (["--model", "vit", "--patch-size", "5"], "vit: patch_size must be one of 4, 7, 14"),
        (["--model", "vit", "--dim", "30", "--heads", "4"], "dim (30) must be a positive multiple"),
        (["--model", "vgg16", "--weights", "missing.pth"], "weights='missing.pth': no such file"),
        (["--model", "cnn", "--patch-size", "7"], "'patch_size' is not a setting of model 'cnn'"),
    ],
)
def test_bad_settings_exit_1_before_any_run(mlflow_store, capsys, argv, message):
    assert main(["train", *argv]) == 1
    assert message in capsys.readouterr().err
    assert runs_in_store() == []


def offline(*args, **kwargs):
    raise OSError  # what a failed download raises, message or not


def test_missing_data_names_the_folder_and_the_fix(mlflow_store, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.MNIST", offline)
    assert main(["train", "--data-dir", str(tmp_path / "nowhere"), *TINY]) == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and "MNIST_DATA_DIR" in err
    assert "train-images-idx3-ubyte" in err
    assert runs_in_store() == []


def test_corrupt_data_names_the_file(mlflow_store, tmp_path, capsys):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, kind in [
        ("train", "images-idx3"),
        ("train", "labels-idx1"),
        ("t10k", "images-idx3"),
        ("t10k", "labels-idx1"),
    ]:
        (raw / f"{split}-{kind}-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)
    assert main(["train", "--data-dir", str(tmp_path / "data"), *TINY]) == 1
    assert "ubyte" in capsys.readouterr().err


def test_weights_that_do_not_fit_the_model(mnist_dir, mlflow_store, tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    argv = ["train", "--model", "alexnet", "--weights", str(path), *TINY]
    assert main(argv) == 1
    assert str(path) in capsys.readouterr().err
    assert runs_in_store() == []


def test_a_failure_before_training_fails_the_launcher_run(mlflow_store, tmp_path, monkeypatch):
    client = MlflowClient()
    launched = client.create_run(client.create_experiment("launched"))
    monkeypatch.setenv("MLFLOW_RUN_ID", launched.info.run_id)
    monkeypatch.setattr(
        "torchvision.datasets.MNIST", lambda *a, **k: (_ for _ in ()).throw(OSError)
    )
    assert main(["train", "--data-dir", str(tmp_path / "nowhere"), *TINY]) == 1
    run = client.get_run(launched.info.run_id)
    assert run.info.status == "FAILED"
    assert "MNIST" in run.data.tags[names.TAG_FAILURE_REASON]


def test_underscore_flags_are_accepted(mnist_dir, mlflow_store):
    argv = ["train", "--model", "cnn", "--epochs", "1", "--eval_batch_size", "50"]
    argv += ["--max_train_samples", "200", "--max_test_samples", "100", "--val_size", "100"]
    argv += ["--robustness_samples", "0"]  # and no corruption suite to wait for
    assert main(argv) == 0
    (run,) = runs_in_store()
    assert run.data.params["eval_batch_size"] == "50"
    assert run.data.params["robustness_samples"] == "0"


@pytest.mark.slow
def test_mlflow_run_entry_point_end_to_end(mnist_dir, mlflow_store, tmp_path):
    """`mlflow run . -e train` creates the run; our code joins it; undeclared -P pass through."""
    client = MlflowClient()
    experiment_id = client.create_experiment("mnist-lab", artifact_location=str(tmp_path / "art"))
    params = {
        "model": "cnn",
        "epochs": "1",
        "max_train_samples": "200",
        "max_test_samples": "100",
        "val_size": "100",
        "eval_batch_size": "50",  # not declared in MLproject: appended as --eval_batch_size
        "lr": "1e-3",  # logged by the launcher as typed; our 0.001 is the same setting
        "robustness_samples": "0",  # undeclared too; and no corruption suite, which this skips
    }
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_cli, "run", str(PROJECT_ROOT), "-e", "train", "--env-manager", "local"]
    command += ["--experiment-name", "mnist-lab"]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
    }
    # --env-manager local runs `python` from PATH: this environment's, as after `activate`.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["eval_batch_size"] == "50"
    assert run.data.params["lr"] == "1e-3"
    assert run.data.params["robustness_samples"] == "0"
    # the resolved config: experiments/cnn.yaml's width, which -P did not set
    assert run.data.params["width"] == str(load_config("cnn").model_options["width"])
    assert names.TEST_ACCURACY in run.data.metrics


@pytest.mark.parametrize(
    ("argv", "field", "expected"),
    [
        (["--retrain", "none"], "retrain", "none"),  # "none" skips the retrain, as documented
        (["--retrain", "subset"], "retrain", "subset"),
        ([], "retrain", "full"),
        (["--pruner", "none"], "pruner", "none"),
        ([], "pruner", "auto"),  # hyperband for val_accuracy alone, none otherwise
        (["--objectives", "none"], "objectives", None),  # MLproject's "unset": val_accuracy
        (["--pick", "none"], "pick", None),
        (["--storage", "none"], "storage", "sqlite:///optuna.db"),  # MLproject's "unset"
        (["--timeout", ""], "timeout", None),
        (["--timeout", "90"], "timeout", 90.0),
    ],
)
def test_tune_flags_reach_the_options_as_documented(argv, field, expected):
    from mnist_lab.cli import build_parser, tune_options

    options = tune_options(build_parser().parse_args(["tune", *argv]))
    value = getattr(options, field)
    if field == "storage":  # the default storage sits at the repo root
        assert value.startswith("sqlite:///") and value.endswith("optuna.db")
    else:
        assert value == expected


def _through_mlflow_run(entry: str, params: dict[str, str]) -> list[str]:
    """The argv `mlflow run . -e <entry> -P k=v …` gives our CLI, rendered by MLflow's own
    code (declared parameters substituted, undeclared ones appended as --k v)."""
    import shlex

    from mlflow.projects._project_spec import load_project

    command = load_project(str(PROJECT_ROOT)).get_entry_point(entry).compute_command(params, None)
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "mnist_lab"], command
    return words[3:]


TUNE_VALUES = [
    ("sampler", "tpe"), ("sampler", "random"),
    ("pruner", "hyperband"), ("pruner", "median"), ("pruner", "none"),
    ("retrain", "full"), ("retrain", "subset"), ("retrain", "none"),
    ("n_trials", "3"), ("workers", "2"), ("timeout", "90"), ("seed", "5"),
    ("study_name", "s1"), ("heartbeat_interval", "30"), ("device", "cpu"),
    ("sampler", "nsga2"), ("pruner", "auto"), ("objectives", "val_accuracy,num_params"),
    ("pick", "val_accuracy, inference_ms_per_image<=0.1"),
    ("constraint", "num_params<=40000, inference_ms_per_image<=0.1"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), TUNE_VALUES)
def test_every_documented_tune_value_arrives_through_mlflow_run(name, value):
    from mnist_lab.cli import build_parser, tune_options

    options = tune_options(build_parser().parse_args(_through_mlflow_run("tune", {name: value})))
    got = options.data[name] if name == "device" else getattr(options, name)
    assert got == type(got)(value), (name, value, got)


TRAIN_VALUES = [
    ("augment", "true", True), ("augment", "false", False), ("augment", "robust", "robust"),
    ("augment", "shift:2,noise:0.1", "shift:2,noise:0.1"),
    ("amp", "false", False), ("compile", "true", True), ("checkpoint", "false", False),
    ("optimizer", "sgd", "sgd"), ("scheduler", "cosine", "cosine"), ("lr", "1e-3", 1e-3),
    ("clean_final_epochs", "2", 2), ("robustness_samples", "0", 0),
    ("input_norm", "minmax", "minmax"), ("pool", "avg", "avg"), ("device", "cpu", "cpu"),
    ("max_train_samples", "500", 500),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "expected"), TRAIN_VALUES)
def test_every_documented_train_value_arrives_through_mlflow_run(name, value, expected):
    from mnist_lab.cli import build_parser, overrides_from

    args = build_parser().parse_args(_through_mlflow_run("train", {name: value}))
    config = load_config(args.model, overrides_from(args), config_file=args.config)
    got = config.model_options[name] if name in config.model_options else getattr(config, name)
    assert got == expected, (name, value, got)


def test_nproc_per_node_arrives_through_mlflow_run():
    from mnist_lab.cli import build_parser

    args = build_parser().parse_args(_through_mlflow_run("train", {"nproc_per_node": "2"}))
    assert args.nproc_per_node == "2"


def test_a_run_config_arrives_through_mlflow_run():
    from mnist_lab.cli import build_parser, overrides_from

    params = {"config": "experiments/cnn_fast.yaml", "epochs": "2"}
    args = build_parser().parse_args(_through_mlflow_run("train", params))
    config = load_config(args.model, overrides_from(args), config_file=args.config)
    assert config.config_file == "experiments/cnn_fast.yaml"
    assert config.model_options["width"] == 16 and config.epochs == 2  # -P over the preset


@pytest.mark.slow
def test_help_needs_neither_torch_nor_mlflow_nor_optuna():
    """`--help` builds the whole parser; nothing it imports may pull in the heavy libraries."""
    import subprocess
    import sys

    from mnist_lab.config import PROJECT_ROOT

    code = (
        "import sys; from mnist_lab.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "command",
    [
        "train",
        "tune",
        "compare",
        "register",
        "robustness",
        "benchmark",
        "report",
        "predict",
        "runs",
    ],
)
def test_every_flag_says_what_it_is_and_its_default(command):
    import argparse

    from mnist_lab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        if action.option_strings and action.dest not in ("help",):
            assert action.help, f"{command} {action.option_strings[0]}: no help"
            required = action.required or action.dest == "model"
            assert required or "default" in action.help, f"{command} {action.option_strings[0]}"


def test_every_model_option_has_a_flag_with_its_help_and_defaults():
    from mnist_lab.models import ARCHITECTURES

    help_text = _train_help()
    for model, entry in ARCHITECTURES.items():
        for name, option in entry.options.items():
            assert f"--{name.replace('_', '-')}" in help_text, name
            assert option.help and f"{model} {option.default}" in help_text, (model, name)


def _train_help() -> str:
    import argparse

    from mnist_lab.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return " ".join(sub.choices["train"].format_help().split())


def test_print_config_prints_the_resolved_settings_and_runs_nothing(mlflow_store, capsys):
    import yaml
    from mlflow.tracking import MlflowClient

    argv = ["train", "--config", "experiments/cnn_fast.yaml", "--lr", "0.02", "--print-config"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    first, rest = out.split("\n", 1)
    assert first == "# cnn: experiments/cnn_fast.yaml + flags --lr"
    settings = yaml.safe_load(rest)
    assert settings["lr"] == 0.02 and settings["model"] == "cnn" and settings["width"] == 16
    assert settings["config_file"] == "experiments/cnn_fast.yaml"
    assert not MlflowClient().search_experiments(filter_string="name = 'mnist-lab'")


def test_one_reading_of_unset_and_booleans():
    from mnist_lab.errors import ConfigError
    from mnist_lab.settings import is_unset, parse_bool

    assert all(is_unset(v) for v in (None, "", " ", "none", "None", "null"))
    assert not is_unset("none", none_is_a_choice=True) and not is_unset(0)
    assert [parse_bool(v, "x") for v in ("true", "YES", "1", True, 1)] == [True] * 5
    assert [parse_bool(v, "x") for v in ("false", "No", "0", False, 0)] == [False] * 5
    with pytest.raises(ConfigError, match="force='maybe' is not a boolean"):
        parse_bool("maybe", "force")


def test_tune_and_robustness_defaults_are_their_options_types():
    from mnist_lab.cli import build_parser, options_from, tune_options
    from mnist_lab.serving.robustness_options import RobustnessOptions
    from mnist_lab.tuning.tune_options import TuneOptions

    parser = build_parser()
    assert tune_options(parser.parse_args(["tune"])) == TuneOptions()
    given = parser.parse_args(["tune", "--pruner", "none", "--timeout", "none", "--n-trials", "5"])
    assert tune_options(given) == TuneOptions(pruner="none", n_trials=5)
    args = parser.parse_args(["robustness", "--run-id", "r", "--samples", "10"])
    assert options_from(RobustnessOptions, vars(args)) == RobustnessOptions(run_id="r", samples=10)
