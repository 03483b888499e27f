"""The run's served model as ONNX, MLflow's onnx flavor: `mlflow models serve` runs it with
onnxruntime, and its requirements hold no torch.

A classifier's logged model `onnx` takes `digits` [B, 28, 28] float32 (pixels in 0–1, or 0–255:
a batch whose maximum exceeds 1 is divided by 255, as the pyfunc does), centres each by its
centre of mass in the graph (`mnist_lab.data.cleaning.clean`, the pyfunc's cleaning) and answers
`probabilities` [B, 10] (the served model's: temperature included) and `digit` [B] int64. It is
exported by torch.onnx's TorchScript-based exporter with a dynamic batch (the torch.export-based
one answers the same and runs as fast, but takes far longer to export, a cost every run would
pay: results/onnx-exporters.md; tests/test_onnx_exporter.py fails the day torch drops
the TorchScript-based one), and checked before it is logged:
onnxruntime's probabilities against torch's on the run's test digits, max |Δ| ≤ TOLERANCE (the
run's metric `onnx_max_abs_prob_diff`). Unlike the pyfunc it does not refuse bad input with a
message: MLflow checks the shape and type against its signature, nothing more.

faster_rcnn's classifier loops over digits in Python and torchvision's detectors take a list
of images, so no batch-dynamic graph of it exists; its detector is exported instead
(`onnx_detector`, one scene [1, H, W] → boxes, labels 1–10, scores), by torchvision's documented
path (the same exporter; the torch.export-based one stops at batched NMS's data-dependent
shapes), and checked on test digits' scenes: the digit probabilities the
classifier makes of its detections (the top box's) within TOLERANCE of torch's.

An export or a check that fails leaves the run without the ONNX model and says why in its tag
`onnx.error` (and a warning); the run itself is not failed for it.
"""

from __future__ import annotations

import io
import logging
import warnings
from importlib.metadata import version

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from torch import nn

from mnist_lab import names
from mnist_lab.data.cleaning import clean
from mnist_lab.models import is_detector
from mnist_lab.models.build import ModelSpec
from mnist_lab.models.common import TemperatureScaled
from mnist_lab.tracking.runs import log_flavor_model, log_metrics, set_tags

log = logging.getLogger(__name__)

OPSET = 18
DETECTOR_OPSET = 17  # torchvision's detection export is tested up to 17
TOLERANCE = 1e-4
INPUT, PROBABILITIES, DIGIT = "digits", "probabilities", "digit"
DETECTOR_INPUT, DETECTOR_OUTPUTS = "scene", ("boxes", "labels", "scores")
CHECKED_SCENES = 16  # the detector's check: scenes of this many test digits


class OnnxDigits(nn.Module):
    """What the ONNX model computes: digits [B, 28, 28] (0–1, or 0–255) → cleaned as the
    pyfunc cleans them → probabilities [B, 10] and digit [B] of `model` (raw digits
    [B, 1, 28, 28] → logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, digits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = digits.float()
        x = torch.where(x.amax(dim=(0, 1, 2)) > 1, x / 255, x)
        probs = self.model(clean(x.unsqueeze(1))).float().softmax(dim=1)
        return probs, probs.argmax(dim=1)


def export_classifier(model: nn.Module, example: np.ndarray, dynamo: bool = False) -> bytes:
    """`model` as ONNX (OnnxDigits, dynamic batch): the serialized ModelProto. `dynamo=True`
    takes torch's torch.export-based exporter instead (python -m mnist_lab.measure
    onnx-exporters compares the two)."""
    digits = (torch.from_numpy(np.ascontiguousarray(example, dtype=np.float32)),)
    names_ = {"input_names": [INPUT], "output_names": [PROBABILITIES, DIGIT]}
    with torch.no_grad():
        if dynamo:
            program = torch.onnx.export(
                OnnxDigits(model.eval()).eval(),
                digits,
                dynamo=True,
                opset_version=OPSET,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
                **names_,
            )
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see test_onnx_exporter.py
            torch.onnx.export(
                OnnxDigits(model.eval()).eval(),
                digits,
                buffer,
                dynamo=False,
                opset_version=OPSET,
                dynamic_axes={name: {0: "batch"} for name in (INPUT, PROBABILITIES, DIGIT)},
                **names_,
            )
        return buffer.getvalue()


def session(onnx_bytes: bytes):
    import onnxruntime

    return onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


def classifier_difference(onnx_bytes: bytes, model: nn.Module, digits: np.ndarray) -> float:
    """max |onnxruntime - torch| of the probabilities over `digits` (uint8 [N, 28, 28]), sent
    as 0–255 and as 0–1 floats; torch's are the pyfunc's (cleaned digits)."""
    ort = session(onnx_bytes)
    x = torch.from_numpy(digits.astype(np.float32) / 255)
    with torch.no_grad():
        expected = model.eval()(clean(x.unsqueeze(1))).float().softmax(dim=1).numpy()
    worst = 0.0
    for sent in (digits.astype(np.float32), x.numpy()):
        probs, digit = ort.run([PROBABILITIES, DIGIT], {INPUT: sent})
        worst = max(worst, float(np.abs(probs - expected).max()))
        if not (digit == probs.argmax(axis=1)).all():
            return float("inf")
    return worst


def export_detector(detector: nn.Module, scene: torch.Tensor) -> bytes:
    """torchvision's detector as ONNX, torchvision's way: one scene [1, H, W] (H, W dynamic) →
    boxes [K, 4], labels [K], scores [K]."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            detector.eval(),
            ([scene],),
            buffer,
            dynamo=False,
            opset_version=DETECTOR_OPSET,
            input_names=[DETECTOR_INPUT],
            output_names=list(DETECTOR_OUTPUTS),
            dynamic_axes={
                DETECTOR_INPUT: {1: "height", 2: "width"},
                **{name: {0: "boxes"} for name in DETECTOR_OUTPUTS},
            },
        )
    return buffer.getvalue()


def detector_difference(onnx_bytes: bytes, detector: nn.Module, scenes: torch.Tensor) -> float:
    """max |onnxruntime - torch| of the digit probabilities the classifier makes of each scene's
    detections (its top box: `top_box_probabilities`), over `scenes` [N, 1, H, W]."""
    # Imported here: it imports torchvision, which a classifier's run never needs.
    from mnist_lab.models.faster_rcnn import top_box_probabilities

    ort = session(onnx_bytes)
    with torch.no_grad():
        expected = detector.eval()(list(scenes))
    answered = []
    for scene in scenes:
        outputs = ort.run(list(DETECTOR_OUTPUTS), {DETECTOR_INPUT: scene.numpy()})
        answered.append(dict(zip(DETECTOR_OUTPUTS, map(torch.from_numpy, outputs), strict=True)))
    (ours, digits), (theirs, their_digits) = map(top_box_probabilities, (answered, expected))
    if not torch.equal(digits, their_digits):
        return float("inf")
    return float((ours - theirs).abs().max())


def log_onnx_model(served: nn.Module, digits: np.ndarray, spec: ModelSpec) -> str | None:
    """Export the run's served model (what its `model` answers with) to ONNX, check it against
    torch on `digits` (uint8 [N, 28, 28], test digits) and log it: `onnx`, or `onnx_detector`
    for faster_rcnn. Returns its URI, or None after a failed export or check (tag onnx.error)."""
    served = served.cpu().eval()
    detector = is_detector(spec.model)
    name = names.ONNX_DETECTOR_ARTIFACT if detector else names.ONNX_ARTIFACT
    try:
        if detector:
            classifier = served.classifier if isinstance(served, TemperatureScaled) else served
            scenes = classifier.canvases(
                torch.from_numpy(digits[:CHECKED_SCENES].astype(np.float32) / 255).unsqueeze(1)
            )
            onnx_bytes = export_detector(classifier.detector, scenes[0])
            difference = detector_difference(onnx_bytes, classifier.detector, scenes)
            example = scenes[0].numpy()
        else:
            example = digits[:8].astype(np.float32) / 255
            onnx_bytes = export_classifier(served, example)
            difference = classifier_difference(onnx_bytes, served, digits)
        if not difference <= TOLERANCE:
            raise ValueError(
                f"onnxruntime's answers differ from torch's by {difference:.3g} (tolerated: "
                f"{TOLERANCE:g}) on {len(digits)} test digits"
            )
    except Exception as err:  # an architecture the exporter cannot take: the run still stands
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"
        log.warning("no ONNX model logged: %s", reason)
        set_tags({names.TAG_ONNX_ERROR: reason})
        return None
    log_metrics(
        {names.ONNX_MAX_PROB_DIFF: difference, names.ONNX_SIZE_BYTES: float(len(onnx_bytes))}
    )
    return _log(onnx_bytes, example, name)


def _log(onnx_bytes: bytes, example: np.ndarray, name: str) -> str:
    import mlflow.onnx
    import onnx

    ort = session(onnx_bytes)
    outputs = ort.run(None, {ort.get_inputs()[0].name: example})
    output_names = [o.name for o in ort.get_outputs()]
    signature = infer_signature(example, dict(zip(output_names, outputs, strict=True)))
    return log_flavor_model(
        mlflow.onnx,
        name,
        onnx_model=onnx.load_from_string(onnx_bytes),
        signature=signature,
        input_example=example,
        pip_requirements=onnx_requirements(),
        onnx_execution_providers=["CPUExecutionProvider"],
        save_as_external_data=False,
    )


def onnx_model_uri(run_id: str, name: str = names.ONNX_ARTIFACT) -> str:
    """`models:/<id>` of run `run_id`'s logged ONNX model, or a LabError saying it has none."""
    from mlflow.exceptions import MlflowException

    from mnist_lab.errors import LabError
    from mnist_lab.tracking.store import store_client

    client = store_client()
    outputs = client.get_run(run_id).outputs
    for output in outputs.model_outputs if outputs else ():
        try:
            if client.get_logged_model(output.model_id).name == name:
                return f"models:/{output.model_id}"
        except MlflowException:  # deleted since
            continue
    reason = client.get_run(run_id).data.tags.get(names.TAG_ONNX_ERROR, "")
    raise LabError(f"run {run_id} logged no {name!r} model" + (f": {reason}" if reason else ""))


def load_onnx_model(uri: str):
    """The onnx flavor's pyfunc at `uri` (`.get_raw_model()`: its onnxruntime session). It runs
    no code from the model: the flavor is MLflow's, the graph onnxruntime's."""
    return mlflow.pyfunc.load_model(uri)


def onnx_requirements() -> list[str]:
    """The onnx model's requirements.txt: what MLflow's onnx flavor imports, pinned; no torch.
    ml-dtypes (onnx's) at the lab's version: a newer one takes 0.6 s to import (pyproject.toml)."""
    flavor = ("mlflow", "onnx", "onnxruntime", "numpy", "ml-dtypes")
    return [f"{name}=={version(name)}" for name in flavor]
