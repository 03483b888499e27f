"""`python -m mnist_lab.measure onnx-exporters`: torch's two ONNX exporters side by side.

For each model (untrained, default options, behind a temperature of 1.5 as a served model),
in one process: the export time of the TorchScript-based exporter (`dynamo=False`, the one the
lab logs with) and of the torch.export-based one (`dynamo=True`), the median of `--repeats`;
each file's largest |Δ probability| against torch on 512 random digits; and onnxruntime's
digits per second at batch 256 for each file, the two sessions alternating, median of
`--repeats`. Needs onnxscript for `dynamo=True`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

PROG = "python -m mnist_lab.measure onnx-exporters"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,vit")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from mnist_lab.measure.hardware import hardware
    from mnist_lab.models.build import build_model
    from mnist_lab.models.common import TemperatureScaled
    from mnist_lab.tracking.onnx import PROBABILITIES, export_classifier, session

    print(f"hardware: {hardware(torch.device('cpu'))}", flush=True)
    digits = np.random.default_rng(0).random((512, 28, 28), dtype=np.float32)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = TemperatureScaled(build_model(name), 1.5).eval()
        with torch.no_grad():
            expected = model(torch.from_numpy(digits).unsqueeze(1)).softmax(dim=1).numpy()
        files, export_s = {}, {}
        for dynamo in (False, True):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                files[dynamo] = export_classifier(model, digits[:2], dynamo=dynamo)
                times.append(time.perf_counter() - start)
            export_s[dynamo] = statistics.median(times)
        sessions = {dynamo: session(data) for dynamo, data in files.items()}
        rates: dict[bool, list[float]] = {False: [], True: []}
        batch = {"digits": digits[:256]}
        for _ in range(args.repeats):
            for dynamo, ort in sessions.items():
                ort.run([PROBABILITIES], batch)  # warm
                start = time.perf_counter()
                for _ in range(5):
                    ort.run([PROBABILITIES], batch)
                rates[dynamo].append(5 * 256 / (time.perf_counter() - start))
        for dynamo, ort in sessions.items():
            (probs,) = ort.run([PROBABILITIES], {"digits": digits})
            print(
                f"{name:4s} {'dynamo=True ' if dynamo else 'dynamo=False'}  export "
                f"{export_s[dynamo]:6.3f} s  max|Δp| {np.abs(probs - expected).max():.1e}  "
                f"onnxruntime {statistics.median(rates[dynamo]):8.0f} digits/s (batch 256)  "
                f"{len(files[dynamo]) / 1e6:.2f} MB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
