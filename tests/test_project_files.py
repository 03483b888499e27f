"""The files users and conda/mlflow read stay in step with the code."""

import tomllib

import yaml

from mnist_lab.cli import build_parser, setting_names
from mnist_lab.config import EXPERIMENTS_DIR, PROJECT_ROOT, load_config
from mnist_lab.models import MODELS


def test_environment_yml_pins_are_pyprojects():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(project["dependencies"])
    assert "python=3.11" in env["dependencies"]


def test_mlproject_parameters_reach_the_cli():
    spec = yaml.safe_load((PROJECT_ROOT / "MLproject").read_text())
    assert spec["conda_env"] == "environment.yml"
    for name, entry in spec["entry_points"].items():
        for parameter in entry.get("parameters", {}):
            assert "{" + parameter + "}" in entry["command"], f"{name}: {parameter} unused"
    # Undeclared -P name=value arrive as --name value: every setting must parse that way.
    parser = build_parser()
    for name in setting_names():
        args = parser.parse_args(["train", f"--{name}", "1"])
        assert getattr(args, name) == "1", name


def test_every_model_has_a_valid_experiment_file():
    for model in MODELS:
        assert (EXPERIMENTS_DIR / f"{model}.yaml").exists(), model
        assert load_config(model).model == model
