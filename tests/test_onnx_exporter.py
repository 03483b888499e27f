"""The ONNX export's exporter: torch's TorchScript-based one (`dynamo=False`), chosen by the
figures in results/onnx-exporters.md (the same answers, a far shorter export). torch deprecates
it; this test is the day it goes."""

import io

import torch

from mnist_lab.tracking.onnx import export_classifier

GONE = (
    "torch {version} no longer has the TorchScript-based ONNX exporter "
    "(torch.onnx.export(..., dynamo=False)) that mnist_lab/tracking/onnx.py exports every run's "
    "ONNX model with ({error}). Switch export_classifier and export_detector to dynamo=True "
    "(results/onnx-exporters.md: the same answers, a far longer export; needs onnxscript) and "
    "measure again with `python -m mnist_lab.measure onnx-exporters`"
)


def test_the_torchscript_based_exporter_is_still_in_the_pinned_torch():
    try:
        torch.onnx.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), io.BytesIO(), dynamo=False)
    except Exception as err:  # a removed keyword (TypeError) or a removed path
        raise AssertionError(GONE.format(version=torch.__version__, error=err)) from None


def test_the_classifier_export_raises_no_warning_but_the_known_deprecation(recwarn):
    data = export_classifier(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)),
        torch.rand(2, 28, 28).numpy(),
    )
    assert data and not [w for w in recwarn if w.category is not DeprecationWarning]
