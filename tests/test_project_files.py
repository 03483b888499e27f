"""The files users and conda/mlflow read stay in step with the code."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from mnist_lab.cli import build_parser, setting_names
from mnist_lab.config import EXPERIMENTS_DIR, PROJECT_ROOT, load_config
from mnist_lab.models import ARCHITECTURES


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
    for model, entry in ARCHITECTURES.items():
        assert (EXPERIMENTS_DIR / f"{entry.run_config}.yaml").exists(), model
        assert load_config(model).model == model


def test_every_shipped_run_config_loads_and_says_what_it_is_for():
    for path in sorted(EXPERIMENTS_DIR.glob("*.yaml")):
        config = load_config(None, config_file=path)
        assert config.config_file == f"experiments/{path.name}"
        assert path.read_text().startswith("#"), f"{path.name}: no comment saying what it is for"


def test_the_suite_is_hermetic() -> None:
    """conftest.py: whatever the shell had, a test sees its own folder and store, umask 022 and
    a UTF-8 locale, and none of the MLflow/Optuna settings it was started with."""
    assert Path.cwd() != PROJECT_ROOT
    assert str(Path.cwd()) in os.environ["MLFLOW_TRACKING_URI"]
    leaked = [v for v in os.environ if v.startswith("OPTUNA_")]
    leaked += [v for v in os.environ if v.startswith("MLFLOW_") and v != "MLFLOW_TRACKING_URI"]
    assert leaked == []
    mask = os.umask(0o022)
    assert mask == 0o022
    assert os.environ["LC_ALL"] == "C.UTF-8"


@pytest.mark.slow
def test_the_suite_passes_with_a_hostile_environment(mnist_dir, tmp_path) -> None:
    """Started from another folder, with MLflow/Optuna variables pointing elsewhere, umask 077
    and the C locale: a test that trains, logs and reads back a run still passes, and nothing
    lands where those variables pointed."""
    trap = tmp_path / "trap"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{trap / 'mlflow.db'}",
        "MLFLOW_EXPERIMENT_NAME": "not-this-one",
        "MLFLOW_RUN_ID": "0123456789abcdef0123456789abcdef",
        "OPTUNA_STORAGE": f"sqlite:///{trap / 'optuna.db'}",
        "LC_ALL": "C",
        "LANG": "C",
    }
    tests = PROJECT_ROOT / "tests" / "test_tracking_conventions.py"
    chosen = "digests or named_tagged"
    command = (
        f"umask 077 && exec {sys.executable} -m pytest -q -p no:cacheprovider {tests} -k '{chosen}'"
    )
    done = subprocess.run(
        ["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
    assert not trap.exists()


# Dependencies the package never imports by name, and why they are pinned anyway.
USED_WITHOUT_IMPORT = {
    "optuna-dashboard": "the study browser users start (`optuna-dashboard <storage>`)",
    "pycocotools": "torchmetrics' COCO mAP backend for the detector",
    "pyarrow": "pandas' parquet engine for predictions/<split>.parquet",
    "psycopg": "SQLAlchemy's PostgreSQL driver for MLflow and Optuna",
    "psutil": "MLflow's system metrics: CPU, memory, disk, network",
    "nvidia-ml-py": "MLflow's system metrics of NVIDIA GPUs",
    "ml-dtypes": "onnx's, held at a version that loads in milliseconds",
}
IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml", "pillow": "PIL"}


def test_every_pinned_dependency_is_used():
    import ast
    import re

    imported = set()
    for path in (PROJECT_ROOT / "mnist_lab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = re.split(r"[\[=<>]", requirement)[0]
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        assert module in imported or name in USED_WITHOUT_IMPORT, f"{name}: pinned, never used"


def test_one_version_and_a_license():
    import mnist_lab

    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    version = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert version == {"attr": "mnist_lab.__version__"} and mnist_lab.__version__
    assert pyproject["project"]["license"] == "MIT"
    assert (PROJECT_ROOT / "LICENSE").read_text().startswith("MIT License")
