"""The built wheel runs from any folder: its run configs and search spaces ship inside it, and
what the lab writes lands in the working folder."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mnist_lab.config import PROJECT_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel `pip wheel --no-deps .` builds, installed (without its dependencies: this
    interpreter's are used) into a folder that goes first on PYTHONPATH."""
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"  # a copy: the build writes build/ and *.egg-info beside it
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(PROJECT_ROOT / "mnist_lab", source / "mnist_lab", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(folder), str(source)], check=True, capture_output=True)
    (wheel,) = folder.glob("mnist_lab-*.whl")
    target = folder / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target)]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True)
    return target


def python(target: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    """This interpreter in `cwd` with the installed wheel first on its path and MLflow's
    defaults (no MLFLOW_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PYTHONPATH"] = str(target)
    command = [sys.executable, *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_wheel_ships_the_configs_and_spaces(installed):
    shipped = {
        p.relative_to(installed / "mnist_lab" / "shipped") for p in installed.rglob("*.yaml")
    }
    for kind in ("experiments", "tuning"):
        assert {Path(kind) / p.name for p in (PROJECT_ROOT / kind).glob("*.yaml")} <= shipped


@pytest.mark.slow
def test_a_one_epoch_train_from_an_empty_folder(installed, mnist_dir, tmp_path):
    where = python(installed, tmp_path, "-c", "import mnist_lab; print(mnist_lab.__file__)")
    assert where.stdout.startswith(str(installed)), where.stdout + where.stderr  # not the checkout
    tiny = ["--epochs", "1", "--max-train-samples", "300", "--max-test-samples", "100"]
    train = ["-m", "mnist_lab", "train", "--model", "cnn", *tiny, "--val-size", "100"]
    done = python(installed, tmp_path, *train)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlruns").is_dir()
    run_id = done.stdout.split()[1].rstrip(":")
    read = f"import json, mlflow; print(json.dumps(mlflow.get_run({run_id!r}).data.params))"
    params = json.loads(python(installed, tmp_path, "-c", read).stdout)
    recipe = yaml.safe_load((PROJECT_ROOT / "experiments" / "cnn.yaml").read_text())
    assert params["config_file"] == "experiments/cnn.yaml"
    for key in ("augment", "input_norm", "lr", "width"):
        assert params[key] == str(recipe[key]), key
