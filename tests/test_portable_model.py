"""A logged model goes where users take it: it loads and serves in a Python environment holding
only what its requirements list (no mnist_lab), answers batches of any size in-process, works
with mlflow.models.evaluate, and its ONNX twin serves with onnxruntime and no torch.

The environments "without mnist_lab" are virtual environments whose site-packages hold links to
this environment's installed distributions: exactly those the model's requirements.txt names and
what they depend on (their metadata's requirements, recursively), nothing else. mnist_lab (an
editable install here) is not among them, and the processes run from a folder without it, with
no PYTHONPATH: an import of mnist_lab the model's own code folder does not satisfy fails there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import torch
from lab_helpers import free_port, server_process, sqlite_store
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mnist_lab import inference, names
from mnist_lab.inference import CHUNK, MAX_BATCH, MAX_DIGITS_ENV, SERVING_ENV, DigitClassifier
from mnist_lab.models import table_modules
from mnist_lab.models.build import ModelSpec, build_model
from mnist_lab.tracking import pyfunc
from mnist_lab.tracking.onnx import TOLERANCE

N = 64  # real test digits sent to the servers


# Environments that hold only a model's requirements.


def requirement_closure(requirements: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions `requirements` name, and what they require, recursively
    (markers evaluated for this interpreter; a parent's extras followed)."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), ()) for r in requirements]
    while todo:
        req, _ = todo.pop()
        name = canonicalize_name(req.name)
        if name in found:
            continue
        found[name] = dist = metadata.distribution(req.name)
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted = sub.marker is None or any(
                sub.marker.evaluate({"extra": extra}) for extra in ("", *req.extras)
            )
            if wanted:
                todo.append((sub, ()))
    return found


def bare_environment(folder: Path, requirements: list[str]) -> Path:
    """A virtual environment in `folder` holding only `requirements` and their dependencies
    (links into this environment's site-packages); returns its bin folder, which also gets
    `mlflow` and `uvicorn` (what `mlflow models serve --env-manager local` runs from PATH)."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder)], check=True)
    bin_dir = folder / "bin"
    site = Path(
        subprocess.run(
            [
                str(bin_dir / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for dist in requirement_closure(requirements).values():
        root = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or []}
        for top in tops - {"..", "__pycache__"}:
            link = site / top
            if not link.exists() and (root / top).exists():
                link.symlink_to(root / top)
    for script in ("mlflow", "uvicorn"):  # their console scripts, as pip would write them
        # (mlflow and mlflow-skinny both declare `mlflow`, the same function)
        entry = next(iter(metadata.entry_points(group="console_scripts", name=script)))
        path = bin_dir / script
        path.write_text(
            f"#!{bin_dir / 'python'}\nimport sys\nfrom {entry.module} import {entry.attr}\n"
            f"sys.exit({entry.attr}())\n"
        )
        path.chmod(0o755)
    return bin_dir


def bare_env_vars(bin_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env.update(extra)
    return env


def requirements_of(model_uri: str) -> list[str]:
    folder = Path(mlflow.artifacts.download_artifacts(model_uri))
    return [line for line in (folder / "requirements.txt").read_text().splitlines() if line]


# One small trained CNN, registered.


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A cnn trained on 1 000 images, tested on all 10 000, registered as mnist-cnn@champion."""
    from mnist_lab.cli import main
    from mnist_lab.config import load_config
    from mnist_lab.data.mnist import load_mnist
    from mnist_lab.train import train

    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("MNIST_DATA_DIR is not set: real-MNIST test")
    folder = tmp_path_factory.mktemp("portable")
    with sqlite_store(folder) as uri:
        settings = {
            "epochs": 1,
            "max_train_samples": 1000,
            "val_size": 500,
            "robustness_samples": 100,
        }
        result = train(load_config("cnn", settings))
        assert main(["register", "--model", "cnn"]) == 0
        mnist = load_mnist()
        run = mlflow.get_run(result.run_id)
        (onnx_model,) = mlflow.search_logged_models(
            filter_string=f"source_run_id = '{result.run_id}' AND name = '{names.ONNX_ARTIFACT}'",
            output_format="list",
        )
        yield {
            "uri": uri,
            "folder": folder,
            "run": run,
            "model": "models:/mnist-cnn@champion",
            "onnx": onnx_model.model_uri,
            "mnist": mnist,
            "digits": mnist.test_images[:N].numpy(),
        }


PROBE = """
import importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("mnist_lab") is None, "mnist_lab is importable here"
for absent in ("torchmetrics", "optuna", "captum"):
    assert importlib.util.find_spec(absent) is None, absent
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
digits = np.load(sys.argv[2]).astype(np.float32)
frame = model.predict(digits)
import mnist_lab
loaded = sorted(m for m in sys.modules if m.startswith("mnist_lab"))
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torchmetrics", "captum", "optuna"})
print(json.dumps({"probs": frame.filter(like="prob_").to_numpy().tolist(),
                  "mnist_lab": mnist_lab.__file__, "modules": loaded, "heavy": heavy}))
"""


@pytest.mark.slow
def test_the_model_loads_and_serves_without_mnist_lab(lab, tmp_path):
    """Load, predict and `mlflow models serve` in an environment holding only the model's
    requirements.txt: the loader and architecture come from the model's own code folder."""
    requirements = requirements_of(lab["model"])
    assert not {"mnist-lab", "torchmetrics", "captum", "optuna"} & {
        canonicalize_name(Requirement(r).name) for r in requirements
    }
    bin_dir = bare_environment(tmp_path / "venv", requirements)
    np.save(tmp_path / "digits.npy", lab["digits"])
    env = bare_env_vars(bin_dir, MLFLOW_TRACKING_URI=lab["uri"])
    done = subprocess.run(
        [str(bin_dir / "python"), "-c", PROBE, lab["model"], str(tmp_path / "digits.npy")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/mnist_lab/" in answer["mnist_lab"]  # the model's copy, not this checkout
    assert answer["heavy"] == []
    assert not any(
        m.startswith(("mnist_lab.engine", "mnist_lab.tracking")) for m in answer["modules"]
    )
    here = mlflow.pyfunc.load_model(lab["model"]).predict(lab["digits"].astype(np.float32))
    np.testing.assert_allclose(answer["probs"], here.filter(like="prob_").to_numpy(), atol=1e-6)

    # `mlflow models serve` from there: answers, refuses what it must with a 4xx, lives on.
    port = free_port()
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", lab["model"]]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/ping", tmp_path / "serve.log", cwd=tmp_path, env=env):
        served = invoke(url, {"inputs": lab["digits"].tolist()})
        assert served.status_code == 200, served.text
        rows = served.json()["predictions"]
        assert [row["digit"] for row in rows] == here["digit"].tolist()
        over = invoke(url, {"inputs": np.zeros((MAX_BATCH + 1, 28, 28), np.uint8).tolist()})
        assert over.status_code == 400 and f"limit of {MAX_BATCH} per request" in over.text
        bad = invoke(url, {"inputs": np.zeros((2, 27, 28)).tolist()})
        assert 400 <= bad.status_code < 500 and "shape" in bad.json()["message"]
        assert invoke(url, {"inputs": lab["digits"][:1].tolist()}).status_code == 200


def invoke(url: str, payload) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    return requests.post(
        f"{url}/invocations", data=json.dumps(payload), headers=headers, timeout=60
    )


@pytest.mark.slow
def test_the_onnx_model_serves_with_onnxruntime_and_no_torch(lab, tmp_path):
    """The run's `onnx` model (temperature included) was checked against torch when logged; from
    an environment holding only its requirements (no torch), `mlflow models serve` answers the
    probabilities the pyfunc does."""
    assert lab["run"].data.metrics[names.ONNX_MAX_PROB_DIFF] <= TOLERANCE
    requirements = requirements_of(lab["onnx"])
    bin_dir = bare_environment(tmp_path / "venv", requirements)
    env = bare_env_vars(bin_dir, MLFLOW_TRACKING_URI=lab["uri"])
    check = "import importlib.util as u; assert u.find_spec('torch') is None, 'torch is here'"
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", check], env=env, cwd=tmp_path)
    assert no_torch.returncode == 0
    pyfunc_probs = (
        mlflow.pyfunc.load_model(lab["model"])
        .predict(lab["digits"].astype(np.float32))
        .filter(like="prob_")
        .to_numpy()
    )
    port = free_port()
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", lab["onnx"]]
    command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    url = f"http://127.0.0.1:{port}"
    with server_process(command, f"{url}/ping", tmp_path / "serve.log", cwd=tmp_path, env=env):
        for digits in (lab["digits"] / 255, lab["digits"]):  # 0–1 floats, 0–255 values
            served = invoke(url, {"inputs": digits.astype(np.float32).tolist()})
            assert served.status_code == 200, served.text
            answer = served.json()["predictions"]
            np.testing.assert_allclose(answer["probabilities"], pyfunc_probs, atol=TOLERANCE)
            assert answer["digit"] == pyfunc_probs.argmax(axis=1).tolist()
        bad = invoke(url, {"inputs": np.zeros((2, 27, 28)).tolist()})
        assert 400 <= bad.status_code < 500
        assert invoke(url, {"inputs": lab["digits"][:1].astype(float).tolist()}).status_code == 200
    assert "torch" not in (tmp_path / "serve.log").read_text().lower().replace("onnx", "")


def test_sixty_thousand_digits_in_one_predict(lab):
    """In-process, a batch of any size: all 60 000 training digits in one call, run CHUNK at a
    time (the module never sees more), the same answers as the module's on any part of them.
    (A small CNN logged for it: the lab's would take a minute on two shared cores.)"""
    spec = ModelSpec("cnn", {"depth": 1, "width": 4})
    torch.manual_seed(0)
    with mlflow.start_run(run_name="sixty-thousand"):
        uri = pyfunc.log_model(spec.build(), lab["digits"][:2].astype(np.float32), spec)
    model = mlflow.pyfunc.load_model(uri)
    module = model.get_raw_model()
    seen: list[int] = []
    hook = module.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    try:
        digits = lab["mnist"].train_images.numpy().astype(np.float32)
        frame = model.predict(digits)
    finally:
        hook.remove()
    assert len(frame) == 60_000 and max(seen) == CHUNK and sum(seen) == 60_000
    with torch.no_grad():
        part = module(torch.from_numpy(digits[12_345:12_400] / 255).unsqueeze(1)).softmax(1)
    np.testing.assert_allclose(
        frame.filter(like="prob_").to_numpy()[12_345:12_400], part.numpy(), atol=1e-6
    )
    assert (frame["digit"].to_numpy() == frame.filter(like="prob_").to_numpy().argmax(1)).all()


def test_mlflow_evaluate_on_test_digits_gives_the_runs_accuracy(lab):
    """mlflow.models.evaluate on the first 2 000 test digits in one call, as docs/serving.md
    writes it; model_config's output "digit" gives it the one column of labels its classifier
    metrics take. Its accuracy is the run's own on those digits (its logged predictions).
    (Not all 10 000: MLflow infers the schema of a column of arrays pixel by pixel; on 2 cores
    of an AMD EPYC this test took 19 s with 10 000 digits, 4 s with 2 000, the same call.)"""
    import pandas as pd

    from mnist_lab.analysis.predictions import INDEX, correct
    from mnist_lab.tracking.query import read_predictions

    count = 2000
    images = lab["mnist"].test_images[:count].numpy().astype(np.float32) / 255
    data = pd.DataFrame({"digits": list(images), "label": lab["mnist"].test_labels[:count].numpy()})
    with mlflow.start_run(run_name="evaluate"):
        result = mlflow.models.evaluate(
            lab["model"],
            data,
            targets="label",
            model_type="classifier",
            evaluators=["default"],
            model_config={"output": "digit"},
        )
    logged = read_predictions(lab["run"].info.run_id, "test")
    first = logged[logged[INDEX] < count]
    assert len(first) == count  # the run read every test digit; these are the same ones
    run_accuracy = correct(first).mean()
    assert result.metrics["accuracy_score"] == pytest.approx(run_accuracy, abs=1.01 / count)


@pytest.mark.slow
def test_generate_dockerfile_of_the_registered_model(lab, tmp_path):
    """The Dockerfile MLflow writes for the registered model builds its environment from the
    model's own files: python_env.yaml and requirements.txt (no mnist_lab install), and the
    model folder it copies in carries its code. Docker itself is not run here."""
    out = tmp_path / "docker"
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "generate-dockerfile"]
    command += ["-m", lab["model"], "-d", str(out), "--env-manager", "virtualenv"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": lab["uri"]}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    dockerfile = (out / "Dockerfile").read_text()
    assert "mnist" not in dockerfile.lower()  # nothing of this repo: the model's files only
    # The model folder goes in as it is; MLflow builds its environment from its python_env.yaml
    # (python 3.11, then pip install -r requirements.txt) when the image is built.
    assert "COPY model_dir /opt/ml/model" in dockerfile
    assert "_install_pyfunc_deps('/opt/ml/model'" in dockerfile
    model = out / "model_dir"
    assert (model / "code" / "mnist_lab" / "inference.py").is_file()
    requirements = (model / "requirements.txt").read_text()
    for package in ("mlflow==", "torch==", "torchvision==", "safetensors==", "numpy=="):
        assert package in requirements
    assert "-r requirements.txt" in (model / "python_env.yaml").read_text()
    assert "python: 3.11" in (model / "python_env.yaml").read_text()


# Without MNIST.


class Counting(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = build_model("cnn", depth=1, width=2)
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.net(x)


def test_any_batch_in_process_in_chunks_and_a_limit_only_when_served(monkeypatch):
    torch.manual_seed(0)
    module = Counting().eval()
    classifier = DigitClassifier(module, chunk=100)
    digits = np.random.default_rng(0).integers(0, 256, (2_345, 28, 28)).astype(np.uint8)
    frame = classifier.predict(digits)
    assert len(frame) == 2_345 and max(module.sizes) == 100 and sum(module.sizes) == 2_345
    with torch.no_grad():
        expected = module.net(torch.from_numpy(digits[:7] / 255).float().unsqueeze(1))
    np.testing.assert_allclose(
        frame.filter(like="prob_").to_numpy()[:7], expected.softmax(1).numpy(), atol=1e-6
    )
    assert (DigitClassifier(module, output="digit").predict(digits) == frame["digit"]).all()

    from mlflow.exceptions import MlflowException

    monkeypatch.setenv(SERVING_ENV, "true")  # what MLflow's scoring server sets
    with pytest.raises(MlflowException, match=f"over the limit of {MAX_BATCH} per request"):
        classifier.predict(digits)
    assert len(classifier.predict(digits[:MAX_BATCH])) == MAX_BATCH
    monkeypatch.setenv(MAX_DIGITS_ENV, "3000")
    assert len(classifier.predict(digits)) == 2_345
    monkeypatch.setenv(MAX_DIGITS_ENV, "10")
    with pytest.raises(MlflowException, match="over the limit of 10 per request"):
        classifier.predict(digits[:11])
    monkeypatch.setenv(MAX_DIGITS_ENV, "0")  # no limit
    assert len(classifier.predict(digits)) == 2_345
    monkeypatch.setenv(MAX_DIGITS_ENV, "many")  # refused when the model loads, not per request
    with pytest.raises(ValueError, match=f"{MAX_DIGITS_ENV}='many'"):
        inference.configured_limit()


def test_the_requirements_name_every_package_the_carried_code_imports(mlflow_store):
    """requirements.txt: mlflow and each distribution whose modules the carried code imports
    (read from the code, not from what this process imported); none of training's."""
    spec = ModelSpec("cnn", {"depth": 1, "width": 2})
    with mlflow.start_run():
        uri = pyfunc.log_model(spec.build(), np.zeros((2, 28, 28), np.float32), spec)
    requirements = {Requirement(r).name: r for r in requirements_of(uri)}
    assert set(requirements) == {
        "mlflow",
        "numpy",
        "pandas",
        "safetensors",
        "timm",
        "torch",
        "torchvision",
    }
    for name, line in requirements.items():
        assert line == f"{name}=={metadata.version(name).split('+')[0]}"
    provided = {
        module
        for name in requirements
        for module, dists in metadata.packages_distributions().items()
        if name in dists
    }
    assert pyfunc.third_party_modules() <= provided
    assert "mnist_lab/inference.py" in pyfunc.code_files()
    builders = {
        f"mnist_lab/{m.removeprefix('mnist_lab.').replace('.', '/')}.py" for m in table_modules()
    }
    assert "mnist_lab/models/cnn.py" in builders and builders <= set(pyfunc.code_files())
    assert not [f for f in pyfunc.code_files() if f.split("/")[1] in ("engine", "tracking")]
    assert inference.__name__ == "mnist_lab.inference"


def test_mlflow_builds_the_projects_environment_from_environment_yml_without_conda():
    """`mlflow run . --env-manager uv` (or virtualenv) builds its environment from MLproject's
    conda_env: MLflow reads environment.yml into a python_env (python version and pip pins);
    those must be pyproject's."""
    import tomllib

    from mlflow.utils.environment import _PythonEnv

    from mnist_lab.config import PROJECT_ROOT

    python_env = _PythonEnv.from_conda_yaml(str(PROJECT_ROOT / "environment.yml"))
    assert python_env.python.startswith("3.11")
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(python_env.dependencies) == sorted(project["dependencies"])
