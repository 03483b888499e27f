"""The logged model: weights and the spec that rebuilds the module, no pickle.

A model folder holds `data/mnist_lab_model/weights.safetensors` (every tensor of the module's
state dict), `spec.json` (a `ModelSpec`: registry name, builder options, wrapping; plus the
weights' sha256) and MLmodel's `python_function` flavor with this module as its loader. Loading
reads JSON and tensors and builds the architecture with the installed mnist_lab's model registry,
so it executes no code from the model file (safetensors holds no code; a changed weights file
fails its checksum).

- `mlflow.pyfunc.load_model(uri).predict(images)` and `mlflow models serve` take a batch of
  28×28 digits, uint8 0–255 or float 0–1, and answer `digit` and `prob_0` … `prob_9`;
- `mlflow.pyfunc.load_model(uri).get_raw_model()` (or `load_module` on the local folder) is the
  `nn.Module`: [B, 1, 28, 28] float in [0, 1] → [B, 10] logits.

Chosen over torch.export (MLflow's `pt2`): an exported program fixes one input signature (the
detector takes a list of images) and loses the module tree that Grad-CAM and attention rollout
hook into. Models logged before this format (pickled `pytorch` flavor) still load.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from torch import nn

from mnist_lab import __version__, names
from mnist_lab.errors import ModelFileError
from mnist_lab.models import ModelSpec
from mnist_lab.names import IMAGE_SIZE, NUM_CLASSES

FORMAT = "mnist_lab.safetensors/1"
MODEL_DATA = "mnist_lab_model"  # the folder under the model's data/
WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "spec.json"

DIGIT = "digit"
# Digits per request, served or local. `python -m mnist_lab.measure serving` on two Xeon cores:
# throughput peaks near 128 digits a request (1 830 digits/s; JSON parsing, not the CNN, is the
# cost) and falls beyond (1 024: 1 400 digits/s, 0.7 s a request, ~5 MB of JSON). Larger
# requests only hold the worker, and its memory, for one client longer.
MAX_BATCH = 1024
PROB_COLUMNS = [f"prob_{k}" for k in range(NUM_CLASSES)]


def as_digit_batch(images: Any) -> torch.Tensor:
    """Raw digits → [B, 1, 28, 28] float32 in [0, 1], or ValueError saying what is wrong.

    Accepts [B, 28, 28] or [B, 1, 28, 28]; values in 0–255 (uint8, or any array whose maximum
    exceeds 1) are scaled by 1/255.
    """
    if isinstance(images, pd.DataFrame):
        images = images.to_numpy()
    array = np.asarray(images)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise ValueError(f"digits must be numbers; got an array of {array.dtype}")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(array) == 0:
        raise ValueError(
            f"expected a non-empty batch of {IMAGE_SIZE}x{IMAGE_SIZE} images, shape "
            f"[B, {IMAGE_SIZE}, {IMAGE_SIZE}] or [B, 1, {IMAGE_SIZE}, {IMAGE_SIZE}]; "
            f"got shape {list(array.shape)}"
        )
    if len(array) > MAX_BATCH:
        raise ValueError(
            f"a batch of {len(array)} digits is over the limit of {MAX_BATCH} per request; "
            f"send at most {MAX_BATCH} per request"
        )
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if array.dtype == np.uint8 or (x.numel() and float(x.max()) > 1.0):
        x = x / 255.0
    if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("pixel values must be finite, in 0–1 (float) or 0–255 (integers)")
    return x.unsqueeze(1)


class DigitClassifier:
    """The pyfunc: digits in, a DataFrame of `digit` and `prob_0` … `prob_9` out."""

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        self.model = model.eval()
        self.device = device

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            x = as_digit_batch(data).to(self.device)
        except ValueError as err:  # the client's input: a 400 naming the problem, not a 500
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        with torch.inference_mode():
            probs = self.model(x).float().softmax(dim=1).cpu().numpy()
        frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
        frame.insert(0, DIGIT, probs.argmax(axis=1).astype(np.int64))
        return frame

    def get_raw_model(self) -> nn.Module:
        return self.model


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> Any:
    """Called by `mlflow.pyfunc.load_model` with the model's data folder.

    A model of this format (weights + spec) is rebuilt by `load_module`; a model logged before
    it (a pickled `pytorch` flavor) still loads through `mlflow.pytorch`, pickle and all.
    """
    device = os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE") or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    if os.path.isfile(os.path.join(data_path, SPEC_FILE)):
        spec, module = load_module(data_path, device)
        return DigitClassifier(module, device) if not spec.part else RawModule(module, spec)
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(
        os.path.dirname(os.path.abspath(data_path)), map_location=device
    )
    return DigitClassifier(model, device)


class RawModule:
    """The pyfunc of a logged sub-module (faster_rcnn's detector): no digit predictions, only
    `get_raw_model()`."""

    def __init__(self, module: nn.Module, spec: ModelSpec) -> None:
        self.module, self.spec = module, spec

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        raise ValueError(
            f"this is the {self.spec.model} model's raw {self.spec.part!r}; it does not take "
            "digits: load it with mlflow.pyfunc.load_model(uri).get_raw_model(), or serve the "
            "run's `model`"
        )

    def get_raw_model(self) -> nn.Module:
        return self.module


def save_weights(module: nn.Module, spec: ModelSpec, folder: Path) -> str:
    """`folder`/weights.safetensors (every tensor of module.state_dict()) and `folder`/spec.json
    (the spec, the format and the weights file's sha256). Returns that sha256."""
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    safetensors.torch.save_model(module, str(weights))
    digest = _sha256(weights)
    record = {
        "format": FORMAT,
        "mnist_lab_version": __version__,
        "weights_sha256": digest,
        **spec.to_dict(),
    }
    (folder / SPEC_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return digest


def load_module(folder: str | Path, device: str = "cpu") -> tuple[ModelSpec, nn.Module]:
    """Rebuild a logged module from `folder` (spec.json + weights.safetensors) with this
    package's model registry; no pickle is read. Raises ModelFileError naming the file and the
    fix for a weights file that is not the one logged, or a spec this version cannot build."""
    import safetensors.torch

    folder = Path(folder)
    record = json.loads((folder / SPEC_FILE).read_text())
    if record.get("format") != FORMAT:
        raise ModelFileError(
            f"{folder / SPEC_FILE}: format {record.get('format')!r}, this mnist-lab reads "
            f"{FORMAT!r}; load it with the mnist-lab version that logged it "
            f"({record.get('mnist_lab_version', '?')})"
        )
    weights = folder / WEIGHTS_FILE
    if _sha256(weights) != record.get("weights_sha256"):
        raise ModelFileError(
            f"{weights}: its sha256 differs from the one recorded when the model was logged: "
            "the file was changed or damaged. Do not load it; log the model again from its run"
        )
    spec = ModelSpec(**{k: record[k] for k in ModelSpec.__dataclass_fields__ if k in record})
    module = spec.build(init=False)  # every tensor is loaded next, strictly
    try:
        safetensors.torch.load_model(module, str(weights), strict=True, device="cpu")
    except (RuntimeError, safetensors.SafetensorError) as err:
        raise ModelFileError(
            f"{weights} does not fit the {spec.model!r} model this mnist-lab builds from "
            f"{folder / SPEC_FILE} ({err}); load it with mnist-lab {record['mnist_lab_version']}"
        ) from err
    return spec, module.to(device).eval()


def verify_folder(folder: str | Path, allow_pickle: bool = False) -> str:
    """Check a downloaded model folder before MLflow loads it: its MLmodel must name this
    module as its only loader and carry no code, and its weights must be this format's.
    Returns the weights' sha256 (from spec.json; `load_module` checks the file against it).

    MLflow imports whatever `loader_module` an MLmodel names and puts its `code` folder on
    sys.path, so an MLmodel edited by whoever can write artifacts would run their code; a
    pickled model (MLflow's pytorch flavor, logged before this format) runs its pickle's. Both
    are refused with a LabError naming the model, the latter unless `allow_pickle`.
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
    data = folder / str(pyfunc.get("data", ""))
    if "pytorch" in flavors and not (data / SPEC_FILE).is_file():
        if allow_pickle:
            return ""
        raise ModelFileError(
            f"{folder}: a pickled model (MLflow's pytorch flavor, logged by an older mnist-lab): "
            "loading it runs whatever code its pickle holds. Re-log it from its run "
            "(train --resume, or a new train run), or pass --allow-pickle if you trust where "
            "it came from"
        )
    extra = sorted(set(flavors) - {"python_function"})
    if pyfunc.get("loader_module") != __name__ or pyfunc.get("code") or extra:
        raise ModelFileError(
            f"{folder}/MLmodel: loader {pyfunc.get('loader_module')!r}, code "
            f"{pyfunc.get('code')!r}, other flavors {extra}: not a model this mnist-lab logged "
            f"(loader {__name__}, no code, no other flavor). Loading it would run code the "
            "model carries; refused"
        )
    try:
        return json.loads((data / SPEC_FILE).read_text())["weights_sha256"]
    except (OSError, KeyError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{data / SPEC_FILE}: missing or unreadable ({err})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def log_model(model: nn.Module, example: np.ndarray, spec: ModelSpec) -> str:
    """Log `model` ([B, 1, 28, 28] float in [0, 1] → [B, 10] logits), built as `spec` says,
    as the run's `model`: weights (safetensors) + spec, no pickle.

    `mlflow.pyfunc.load_model(uri)` and `mlflow models serve` take a batch of 28×28 digits
    (`example`: [B, 28, 28] float32 in [0, 1]; 0–255 values are scaled) and answer `digit` and
    `prob_0` … `prob_9`; `.get_raw_model()` is the `nn.Module`. Loading rebuilds the
    architecture with the installed mnist_lab. Returns the model URI.
    """
    model = model.eval()
    output = DigitClassifier(model, _device_of(model)).predict(example)
    with warnings.catch_warnings():  # "integer column cannot hold missing values": `digit` never
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        signature = infer_signature(example, output)
    return _log(model, spec, names.MODEL_ARTIFACT, signature=signature, input_example=example)


def log_torch_model(module: nn.Module, spec: ModelSpec, name: str) -> str:
    """Log a sub-module (faster_rcnn's detector, which takes a list of images) the same way,
    with no signature: `mlflow.pyfunc.load_model(uri).get_raw_model()` returns it."""
    return _log(module.eval(), spec, name)


def _log(module: nn.Module, spec: ModelSpec, name: str, **kwargs: Any) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / MODEL_DATA
        digest = save_weights(module, spec, folder)
        # Out of the artifact store's reach: a weights file swapped there (with its spec.json)
        # no longer matches what the run recorded.
        mlflow.set_tag(names.model_sha256_tag(name), digest)
        info = mlflow.pyfunc.log_model(
            name=name,
            loader_module=__name__,
            data_path=str(folder),
            pip_requirements=_model_requirements(),
            **kwargs,
        )
    return info.model_uri


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


# What importing this module (through the `mnist_lab.tracking` package) and the rebuilt models
# need, beyond mlflow and mnist_lab itself.
MODEL_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pyyaml",
    "scikit-learn",
    "tqdm",
    "matplotlib",
    "safetensors",
)


def _model_requirements() -> list[str]:
    from importlib.metadata import version

    pins = [f"{name}=={version(name).split('+')[0]}" for name in MODEL_PACKAGES]
    return [f"mlflow=={mlflow.__version__}", *pins]
