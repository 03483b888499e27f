"""A logged model at inference: the pyfunc loader MLflow calls, the digits it takes, the files
that rebuild its module. Nothing here trains or writes runs.

A logged `model` is weights (`data/mnist_lab_model/weights.safetensors`), a spec that rebuilds
the module (`spec.json`) and, under its `code/` folder (MLflow's `code_paths`), this module and
the mnist_lab modules it imports: models/, errors, names, the scene pasting the detector
uses and the cleaning every digit gets (data/cleaning.py: centred by its centre of mass, as
MNIST's digits are). Its MLmodel names this module as the loader, so the model loads wherever
the packages of its requirements.txt are installed (mlflow, torch, torchvision, timm, numpy, pandas,
safetensors), with no mnist_lab checkout or install: MLflow puts `code/` on sys.path. In a
process that imported mnist_lab before loading, that mnist_lab's modules are the ones used.

It imports torch, numpy, pandas and safetensors, mnist_lab's models, errors and names, and
mlflow for the exception that makes a bad request a 400; not the training engine, torchmetrics,
captum, optuna, matplotlib or yaml. spec.json records the sha256 of the weights and of the code
folder; loading checks both (tracking.load_model also checks them against the logging run's
tags before MLflow imports anything). No pickle is read: safetensors holds no code. spec.json's
`format_version` says how to read the folder; a version this code does not read is refused by
name (docs/serving.md#the-model-format has the rule for changing it).

- `mlflow.pyfunc.load_model(uri).predict(images)` takes any number of 28×28 digits, uint8 0–255
  or float 0–1, centres each by its centre of mass (`mnist_lab.data.cleaning.clean`: a digit
  anywhere in the frame reaches the network where MNIST's are; MNIST's own digits are left as
  they are), runs them CHUNK at a time (bounded memory), and answers `digit` and `prob_0` …
  `prob_9` (`model_config={"output": "digit"}`: the digits alone, as mlflow.models.evaluate
  wants them). Served (`mlflow models serve`), a request holds at most `request_limit()` digits.
- `mlflow.pyfunc.load_model(uri).get_raw_model()` is the `nn.Module`: [B, 1, 28, 28] float in
  [0, 1] → [B, 10] logits, no cleaning (apply `clean` first for digits that may be off-centre).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mnist_lab import __version__
from mnist_lab.data.cleaning import clean
from mnist_lab.errors import ModelFileError
from mnist_lab.models.build import ModelSpec
from mnist_lab.names import IMAGE_SIZE, NUM_CLASSES

FORMAT_VERSION = 1  # spec.json's `format_version`, written when a model is logged
READ_VERSIONS = (FORMAT_VERSION,)  # the versions `read_spec` takes
MODEL_DATA = "mnist_lab_model"  # the folder under the model's data/
WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "spec.json"
CODE_DIR = "code"  # MLflow's folder of code_paths in a model, put on sys.path when it loads

DIGIT = "digit"
PROB_COLUMNS = [f"prob_{k}" for k in range(NUM_CLASSES)]

# Digits one forward pass takes: a batch of any size is run this many at a time, so its memory
# is the chunk's (plus 10 probabilities a digit), whatever the batch.
CHUNK = 256

# Digits per request to the REST server (`mlflow models serve`); in-process callers have no limit.
# `python -m mnist_lab.measure serving` on two Xeon cores: throughput peaks near 128 digits a
# request (1 830 digits/s; JSON parsing, not the CNN, is the cost) and falls beyond (1 024:
# 1 400 digits/s, 0.7 s a request, ~5 MB of JSON). Larger requests only hold the worker, and its
# memory, for one client longer. The server's environment sets it: MAX_DIGITS_ENV=N, 0 for none.
MAX_BATCH = 1024
MAX_DIGITS_ENV = "MNIST_LAB_MAX_DIGITS_PER_REQUEST"
# What MLflow's scoring server sets in its workers (`scoring_server.init`), and around
# `mlflow models predict`: the process answers requests.
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


def configured_limit() -> int | None:
    """What the environment sets: $MNIST_LAB_MAX_DIGITS_PER_REQUEST (0: no limit), or MAX_BATCH.
    A value that is not a whole number is a ValueError (raised when the model loads)."""
    raw = os.environ.get(MAX_DIGITS_ENV, "").strip()
    try:
        limit = int(raw) if raw else MAX_BATCH
    except ValueError:
        raise ValueError(f"{MAX_DIGITS_ENV}={raw!r}: give a whole number (0: no limit)") from None
    return limit if limit > 0 else None


def request_limit() -> int | None:
    """Digits one call may hold: `configured_limit()` inside MLflow's scoring server; None (no
    limit) in any other process."""
    if os.environ.get(SERVING_ENV, "").lower() not in ("true", "1"):
        return None
    return configured_limit()


def digit_array(images: Any) -> tuple[np.ndarray, float]:
    """Raw digits → ([B, 28, 28] array as given, what divides it into [0, 1]), or ValueError
    saying what is wrong. Accepts [B, 28, 28] or [B, 1, 28, 28]; values in 0–255 (uint8, or any
    array whose maximum exceeds 1) are divided by 255. Nothing is copied but a DataFrame's."""
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
    scaled = array.dtype == np.uint8 or bool(np.max(array) > 1)
    return array, (255.0 if scaled else 1.0)


def digit_tensor(array: np.ndarray, divisor: float) -> torch.Tensor:
    """Part of `digit_array`'s array → [b, 1, 28, 28] float32 in [0, 1], or ValueError."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if divisor != 1.0:
        x = x / divisor
    if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("pixel values must be finite, in 0–1 (float) or 0–255 (integers)")
    return x.unsqueeze(1)


def as_digit_batch(images: Any) -> torch.Tensor:
    """Raw digits → [B, 1, 28, 28] float32 in [0, 1] (all of them at once), or ValueError."""
    return digit_tensor(*digit_array(images))


def _bad_request(err: ValueError) -> Exception:
    """The client's input: a 400 naming the problem when served, not a 500."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE)


# `mlflow.pyfunc.load_model(uri, model_config={...})` (and `mlflow.models.evaluate(...,
# model_config=...)`): "output": "frame" (the default: `digit` and `prob_0` … `prob_9`) or "digit"
# (an int64 array of digits, the one column mlflow.models.evaluate's classifier metrics take);
# "chunk": digits a forward pass takes.
OUTPUTS = ("frame", "digit")
MODEL_CONFIG = {"output": "frame", "chunk": CHUNK}  # logged with the model: the keys it takes


class DigitClassifier:
    """The pyfunc: digits in, a DataFrame of `digit` and `prob_0` … `prob_9` out (or only the
    digits, `output="digit"`)."""

    def __init__(
        self, model: nn.Module, device: str = "cpu", chunk: int = CHUNK, output: str = "frame"
    ) -> None:
        if output not in OUTPUTS or not (isinstance(chunk, int) and chunk > 0):
            raise ValueError(
                f"model_config: output {output!r} (one of {', '.join(OUTPUTS)}), chunk {chunk!r} "
                "(a positive whole number of digits)"
            )
        self.model = model.eval()
        self.device = device
        self.chunk = chunk
        self.output = output

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> pd.DataFrame | np.ndarray:
        try:
            digits, divisor = digit_array(data)
            limit = request_limit()
            if limit is not None and len(digits) > limit:
                raise ValueError(
                    f"a batch of {len(digits)} digits is over the limit of {limit} per request "
                    f"of this server; send at most {limit} per request (its environment's "
                    f"{MAX_DIGITS_ENV} sets it), or predict in-process, where any size goes"
                )
        except ValueError as err:
            raise _bad_request(err) from None
        probs = np.empty((len(digits), NUM_CLASSES), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(digits), self.chunk):
                try:
                    x = digit_tensor(digits[start : start + self.chunk], divisor)
                except ValueError as err:
                    raise _bad_request(err) from None
                logits = self.model(clean(x.to(self.device)))
                probs[start : start + len(x)] = logits.float().softmax(dim=1).cpu().numpy()
        digits_out = probs.argmax(axis=1).astype(np.int64)
        if self.output == "digit":
            return digits_out
        frame = pd.DataFrame(probs, columns=PROB_COLUMNS)
        frame.insert(0, DIGIT, digits_out)
        return frame

    def get_raw_model(self) -> nn.Module:
        return self.model


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


def _load_pyfunc(data_path: str, model_config: dict[str, Any] | None = None) -> Any:
    """Called by `mlflow.pyfunc.load_model` with the model's data folder: checks the model's
    code folder against spec.json, rebuilds the module (`load_module`)."""
    device = os.environ.get("MLFLOW_DEFAULT_PREDICTION_DEVICE") or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    check_code(data_path)
    configured_limit()  # a server started with a malformed limit stops here, not at requests
    spec, module = load_module(data_path, device)
    if spec.part:
        return RawModule(module, spec)
    config = dict(model_config or {})
    unknown = sorted(set(config) - set(MODEL_CONFIG))
    if unknown:
        raise ValueError(
            f"model_config: unknown key(s) {unknown}; known: {', '.join(MODEL_CONFIG)}"
        )
    return DigitClassifier(module, device, **config)


def save_weights(
    module: nn.Module, spec: ModelSpec, folder: Path, code_sha256: str | None = None
) -> str:
    """`folder`/weights.safetensors (every tensor of module.state_dict()) and `folder`/spec.json
    (the spec, the format version, the weights file's sha256 and, for a model that carries its
    code, the code folder's). Returns the weights' sha256."""
    import safetensors.torch

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    safetensors.torch.save_model(module, str(weights))
    digest = file_sha256(weights)
    record = {
        "format_version": FORMAT_VERSION,
        "mnist_lab_version": __version__,
        "weights_sha256": digest,
        **({"code_sha256": code_sha256} if code_sha256 else {}),
        **spec.to_dict(),
    }
    (folder / SPEC_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return digest


def read_spec(folder: str | Path) -> dict[str, Any]:
    """`folder`/spec.json, checked to be a format version this code reads; ModelFileError naming
    the version found, the ones read, and the release that logged the model otherwise."""
    path = Path(folder) / SPEC_FILE
    try:
        record = json.loads(path.read_text())
        found = record.get("format_version")
    except (OSError, json.JSONDecodeError, AttributeError) as err:  # AttributeError: not {…}
        raise ModelFileError(f"{path}: missing or unreadable ({err})") from None
    if type(found) is not int or found not in READ_VERSIONS:  # type: JSON's true is no 1
        raise ModelFileError(
            f"{path}: model format version {found!r}; mnist-lab {__version__} reads version "
            f"{', '.join(map(str, READ_VERSIONS))}. Load it with the mnist-lab release that "
            f"logged it ({record.get('mnist_lab_version', '?')}): install that version"
        )
    return record


def load_module(folder: str | Path, device: str = "cpu") -> tuple[ModelSpec, nn.Module]:
    """Rebuild a logged module from `folder` (spec.json + weights.safetensors) with mnist_lab's
    architecture table; no pickle is read. Raises ModelFileError naming the file and the fix for a
    format version this code does not read, a weights file that is not the one logged, or a spec
    this version cannot build."""
    import safetensors.torch

    folder = Path(folder)
    record = read_spec(folder)
    weights = folder / WEIGHTS_FILE
    if file_sha256(weights) != record.get("weights_sha256"):
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


def code_folder(data_path: str | Path) -> Path:
    """The code folder of the model whose data folder is `data_path` (<model>/data/<name>)."""
    return Path(data_path).resolve().parents[1] / CODE_DIR


def check_code(data_path: str | Path) -> None:
    """The model's code folder against the sha256 its spec.json recorded. ModelFileError when
    they differ, or when spec.json records none."""
    record = read_spec(data_path)
    recorded = record.get("code_sha256")
    if not recorded:
        raise ModelFileError(
            f"{Path(data_path) / SPEC_FILE}: records no sha256 of the model's code"
        )
    folder = code_folder(data_path)
    if code_sha256(folder) != recorded:
        raise ModelFileError(
            f"{folder}: the model's code is not the code logged with it (its sha256 differs "
            "from spec.json's): a file was changed, added or removed. Do not load it; log the "
            "model again from its run"
        )


def code_sha256(folder: str | Path) -> str:
    """One sha256 over every file under `folder` (its path and its bytes), compiled caches
    (__pycache__) left out: Python writes those beside the code when it imports it."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
