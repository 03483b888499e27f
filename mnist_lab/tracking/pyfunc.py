"""Logging the run's model, and checking a downloaded one before MLflow loads it.

A model folder holds `data/mnist_lab_model/weights.safetensors` (every tensor of the module's
state dict), `spec.json` (a `ModelSpec`: architecture name, builder options, wrapping; the sha256 of
the weights and of the code folder), `code/mnist_lab/…` (the loader, `mnist_lab.inference`, and
the modules it imports, nothing else: MLflow's `code_paths`) and a `requirements.txt` naming
every package those modules import. So it loads and serves without this repo (`mlflow models
serve`, `--env-manager uv`, `build-docker`, another team's registry), executes no code from a
pickle, and a changed weights or code file fails its checksum. See `mnist_lab.inference`.

Chosen over torch.export (MLflow's `pt2`): an exported program fixes one input signature (the
detector takes a list of images) and loses the module tree that Grad-CAM and attention rollout
hook into; the run's `onnx` model (tracking.onnx) is the exported form. The code travels as
code_paths, not as a wheel of mnist-lab named in the requirements: a wheel would bring every
dependency of the whole package (optuna, captum, torchmetrics, psycopg, …) into a serving
environment, and a process holding only the requirements could not load the model without first
installing it; the copied modules are hashed and checked like the weights.
"""

from __future__ import annotations

import ast
import functools
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.models import infer_signature
from torch import nn

from mnist_lab import inference, names
from mnist_lab.errors import ModelFileError
from mnist_lab.inference import MODEL_DATA, SPEC_FILE, DigitClassifier, save_weights
from mnist_lab.models import table_modules
from mnist_lab.models.build import ModelSpec
from mnist_lab.tracking.runs import log_flavor_model, set_tags

PACKAGE = Path(inference.__file__).resolve().parent  # mnist_lab/
LOADER = inference.__name__  # the loader a logged model's MLmodel names; it travels in code/


# What travels with a model.


def code_files() -> list[str]:
    """The files of mnist_lab the loader imports, directly or not, at import or inside a
    function (read with `ast`, so whatever the process has imported does not matter), and the
    `__init__.py` of every package on their way: paths relative to mnist_lab's parent."""
    seen: set[Path] = set()
    todo = [Path(inference.__file__).resolve()]
    todo += [file for module in table_modules() for file in _files_of(module)]  # the builders
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            todo += _files_of(module)
    return sorted(p.relative_to(PACKAGE.parent).as_posix() for p in seen)


def _imported_modules(path: Path) -> list[str]:
    """Dotted names of every module `path` imports (`from a import b`: a, and a.b)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(("mnist_lab", *path.relative_to(PACKAGE).parent.parts))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]
    return found


def _files_of(module: str) -> list[Path]:
    """The file of mnist_lab module `module` and its packages' `__init__.py`; [] for another
    package's module or a name that is not a module (`from mnist_lab.x import SomeClass`)."""
    parts = module.split(".")
    if parts[0] != "mnist_lab":
        return []
    files = [PACKAGE.joinpath(*parts[1:i], "__init__.py") for i in range(1, len(parts))]
    stem = PACKAGE.joinpath(*parts[1:])
    leaf = stem / "__init__.py" if stem.is_dir() else stem.with_suffix(".py")
    return [f.resolve() for f in [*files, leaf] if f.is_file()]


def third_party_modules() -> set[str]:
    """Top-level names of the packages the shipped modules import, the standard library left
    out (e.g. {'torch', 'numpy', 'mlflow', …})."""
    tops = set()
    for file in code_files():
        for module in _imported_modules(PACKAGE.parent / file):
            top = module.split(".")[0]
            if top and top != "mnist_lab" and top not in sys.stdlib_module_names:
                tops.add(top)
    return tops


@functools.cache
def model_requirements() -> tuple[str, ...]:
    """requirements.txt of a logged model: mlflow and the distribution of every package its
    code imports, pinned to the versions installed here (a local tag such as +cpu dropped).
    A package's distribution is the one named alike where one is installed (torch, numpy,
    mlflow rather than mlflow-skinny); only for the others are the installed distributions
    scanned, which takes seconds. Read once a process."""
    from importlib.metadata import PackageNotFoundError, version

    dists = {"mlflow"}
    for module in third_party_modules():
        try:
            version(module)
            dists.add(module)
        except PackageNotFoundError:
            found = _providers().get(module)
            if not found:
                raise ModelFileError(f"no installed distribution provides {module!r}") from None
            dists.add(sorted(found)[0])
    dists -= {"mlflow-skinny", "mlflow-tracing"}  # mlflow brings them
    ordered = ["mlflow", *sorted(dists - {"mlflow"}, key=str.lower)]
    return tuple(f"{name}=={version(name).split('+')[0]}" for name in ordered)


@functools.cache
def _providers() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()


def copy_code(folder: Path) -> Path:
    """The code a model carries, copied to `folder`/mnist_lab; returns that folder."""
    target = folder / "mnist_lab"
    for file in code_files():
        destination = folder / file
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE.parent / file, destination)
    return target


# Logging.


def log_model(model: nn.Module, example: np.ndarray, spec: ModelSpec) -> str:
    """Log `model` ([B, 1, 28, 28] float in [0, 1] → [B, 10] logits), built as `spec` says,
    as the run's `model`: weights (safetensors) + spec + the code that rebuilds it, no pickle.

    `mlflow.pyfunc.load_model(uri)` and `mlflow models serve` take a batch of 28×28 digits
    (`example`: [B, 28, 28] float32 in [0, 1]; 0–255 values are scaled) and answer `digit` and
    `prob_0` … `prob_9`; `.get_raw_model()` is the `nn.Module`. Returns the model URI.
    """
    model = model.eval()
    output = DigitClassifier(model, _device_of(model)).predict(example)
    with warnings.catch_warnings():  # "integer column cannot hold missing values": `digit` never
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        signature = infer_signature(example, output)
    return _log(
        model,
        spec,
        names.MODEL_ARTIFACT,
        signature=signature,
        input_example=example,
        model_config=inference.MODEL_CONFIG,
    )


def log_torch_model(module: nn.Module, spec: ModelSpec, name: str) -> str:
    """Log a sub-module (faster_rcnn's detector, which takes a list of images) the same way,
    with no signature: `mlflow.pyfunc.load_model(uri).get_raw_model()` returns it."""
    return _log(module.eval(), spec, name)


def _log(module: nn.Module, spec: ModelSpec, name: str, **kwargs: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        code = copy_code(Path(tmp) / "code")
        code_digest = inference.code_sha256(code.parent)
        folder = Path(tmp) / MODEL_DATA
        digest = save_weights(module, spec, folder, code_sha256=code_digest)
        # Out of the artifact store's reach: a weights or code file swapped there (with its
        # spec.json) then differs from what the run recorded.
        set_tags(
            {names.model_sha256_tag(name): digest, names.model_code_sha256_tag(name): code_digest}
        )
        return log_flavor_model(
            mlflow.pyfunc,
            name,
            loader_module=LOADER,
            data_path=str(folder),
            code_paths=[str(code)],
            pip_requirements=list(model_requirements()),
            **kwargs,
        )


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


# Checking a downloaded model.


@dataclass(frozen=True)
class Digests:
    """What a model folder's spec.json records: the sha256 of its weights and of its code."""

    weights: str
    code: str


def verify_folder(folder: str | Path) -> Digests:
    """Check a downloaded model folder before MLflow loads it: its MLmodel must name this
    package's loader with its code folder and no other flavor, its spec.json must be a format
    version this code reads, and its code folder must be the one spec.json records. Returns
    spec.json's digests (`load_module` checks the weights file against them).

    MLflow imports whatever `loader_module` an MLmodel names and puts its `code` folder on
    sys.path, so an MLmodel or code edited by whoever can write artifacts would run their code;
    another flavor (MLflow's pickled `pytorch`) would run its pickle's. All are refused with a
    ModelFileError naming the model.
    """
    import yaml

    folder = Path(folder)
    try:
        flavors = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]
        pyfunc = flavors["python_function"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise ModelFileError(
            f"{folder}: not an MLflow model with a python_function ({err})"
        ) from None
    loader, code = pyfunc.get("loader_module"), pyfunc.get("code")
    extra = sorted(set(flavors) - {"python_function"})
    if loader != LOADER or code != inference.CODE_DIR or extra:
        raise ModelFileError(
            f"{folder}/MLmodel: loader {loader!r}, code {code!r}, other flavors {extra}: not a "
            f"model this mnist-lab logged (loader {LOADER} with code {inference.CODE_DIR!r}, no "
            "other flavor). Loading it would run code the model carries; refused"
        )
    data = folder / str(pyfunc.get("data", ""))
    record = inference.read_spec(data)
    if "weights_sha256" not in record:
        raise ModelFileError(f"{data / SPEC_FILE}: records no sha256 of the model's weights")
    inference.check_code(data)
    return Digests(record["weights_sha256"], record["code_sha256"])
