"""The logged model: one MLflow model with two flavors over one pickled `nn.Module`.

- `pytorch`: `mlflow.pytorch.load_model(uri)` gives the raw classifier, [B, 1, 28, 28] float in
  [0, 1] → [B, 10] logits. Pickled (not `torch.export`), so any module logs, whatever device it
  was trained on, and it loads on CPU or GPU.
- `python_function` (loader: this module): `mlflow.pyfunc.load_model(uri).predict(images)` and
  `mlflow models serve` take a batch of 28×28 digits, uint8 0–255 or float 0–1, and answer a
  DataFrame with `digit` and `prob_0` … `prob_9`.

MLflow's pytorch flavor would make its own pyfunc return the bare logits tensor; `save_model` below
keeps its files and points the pyfunc flavor here instead. It is the flavor `Model.log` saves with.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature
from torch import nn

from mnist_lab import names
from mnist_lab.config import PROJECT_ROOT
from mnist_lab.names import IMAGE_SIZE, NUM_CLASSES

DIGIT = "digit"
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
        x = as_digit_batch(data).to(self.device)
        with torch.inference_mode():
            probs = self.model(x).float().softmax(dim=1).cpu().numpy()
        frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
        frame.insert(0, DIGIT, probs.argmax(axis=1).astype(np.int64))
        return frame

    def get_raw_model(self) -> nn.Module:
        return self.model


def save_model(path: str, mlflow_model: Any, **kwargs: Any) -> None:
    """Save as MLflow's pytorch flavor (pickle), then make this module the pyfunc loader."""
    import mlflow.pytorch
    from mlflow import pyfunc
    from mlflow.models import Model

    mlflow.pytorch.save_model(
        path=path, mlflow_model=mlflow_model, serialization_format="pickle", **kwargs
    )
    conf = mlflow_model.flavors[pyfunc.FLAVOR_NAME]
    pyfunc.add_to_model(
        mlflow_model,
        loader_module=__name__,
        data=conf[pyfunc.DATA],
        code=conf.get(pyfunc.CODE),
        conda_env=conf[pyfunc.ENV]["conda"],
        python_env=conf[pyfunc.ENV]["virtualenv"],
    )
    mlflow_model.save(os.path.join(path, "MLmodel"))
    assert Model.load(path).flavors[pyfunc.FLAVOR_NAME]["loader_module"] == __name__


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> DigitClassifier:
    """Called by `mlflow.pyfunc.load_model` with the model's `data` folder."""
    import mlflow.pytorch

    device = os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE") or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    model = mlflow.pytorch.load_model(
        os.path.dirname(os.path.abspath(data_path)), map_location=device
    )
    return DigitClassifier(model, device)


def log_model(model: nn.Module, example: np.ndarray) -> str:
    """Log `model` ([B, 1, 28, 28] float in [0, 1] → [B, 10] logits) as the run's `model`.

    One MLflow model, two flavors (this module): `mlflow.pytorch.load_model`
    gives the module back; `mlflow.pyfunc.load_model` and `mlflow models serve` take a batch of
    28×28 digits (`example`: [B, 28, 28] float32 in [0, 1]; 0–255 values are scaled) and answer
    `digit` and `prob_0` … `prob_9`. The package source travels with the model (`code_paths`),
    so it loads wherever mlflow and torch are installed. Returns the model URI.
    """
    model = model.eval()
    output = DigitClassifier(model, _device_of(model)).predict(example)
    with warnings.catch_warnings():  # "integer column cannot hold missing values": `digit` never
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        signature = infer_signature(example, output)
    info = mlflow.models.Model.log(
        artifact_path=None,
        name=names.MODEL_ARTIFACT,
        flavor=sys.modules[__name__],  # save_model below
        pytorch_model=model,
        signature=signature,
        input_example=example,
        code_paths=[str(PROJECT_ROOT / "mnist_lab")],
        pip_requirements=_model_requirements(),
    )
    return info.model_uri


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)


# What importing this module (through the `mnist_lab.tracking` package) and the pickled
# modules needs, beyond mlflow itself: a model served in a fresh environment installs these.
MODEL_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "pyyaml",
    "scikit-learn",
    "tqdm",
    "matplotlib",
)


def _model_requirements() -> list[str]:
    from importlib.metadata import version

    pins = [f"{name}=={version(name).split('+')[0]}" for name in MODEL_PACKAGES]
    return [f"mlflow=={mlflow.__version__}", *pins]


def log_torch_model(module: nn.Module, name: str = names.DETECTOR_ARTIFACT) -> str:
    """Log `module` as it is, pickled, with no signature (e.g. a torchvision detector, which
    takes a list of images), so `mlflow.pytorch.load_model` returns it. Returns the model URI."""
    info = mlflow.pytorch.log_model(
        module.eval(),
        name=name,
        serialization_format="pickle",  # "pt2" traces one input shape; a detector has none
        code_paths=[str(PROJECT_ROOT / "mnist_lab")],
        pip_requirements=_model_requirements(),
    )
    return info.model_uri
