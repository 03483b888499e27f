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

from mnist_lab.engine.device import machine_name
from mnist_lab.measure import results_table

PROG = "python -m mnist_lab.measure onnx-exporters"
TABLE = results_table.Table(
    name="onnx-exporters",
    title="torch's two ONNX exporters: export time, answers, onnxruntime speed",
    command=f"{PROG} --output-dir results",
    header=(
        "Untrained default models behind a temperature of 1.5, exported by torch's "
        "TorchScript-based exporter (`dynamo=False`) and its torch.export-based one "
        "(`dynamo=True`) in one process: the export's seconds (median of n), the largest "
        "|Δ probability| against torch on 512 random digits, and onnxruntime digits a second at "
        "batch 256 (the two files alternating, median of n)."
    ),
    columns=("model", "exporter", "n", "export_s", "max_abs_dp", "onnxruntime_digits_s", "file_mb"),
    key=("model", "exporter"),
    formats={
        "export_s": "{:.2f}",
        "max_abs_dp": "{:.1e}",
        "onnxruntime_digits_s": "{:,.0f}",
        "file_mb": "{:.2f}",
    },
    packages=("onnxruntime", "onnxscript"),
)
EXPORTERS = {False: "TorchScript-based", True: "torch.export-based"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cnn,vit")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output-dir", default=None, help="write onnx-exporters.md/.csv there")
    args = parser.parse_args(argv)
    rows = []

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
            rows.append(
                {
                    "model": name,
                    "exporter": EXPORTERS[dynamo],
                    "n": args.repeats,
                    "export_s": export_s[dynamo],
                    "max_abs_dp": float(np.abs(probs - expected).max()),
                    "onnxruntime_digits_s": statistics.median(rates[dynamo]),
                    "file_mb": len(files[dynamo]) / 1e6,
                }
            )
            print(
                f"{name:4s} {'dynamo=True ' if dynamo else 'dynamo=False'}  export "
                f"{export_s[dynamo]:6.3f} s  max|Δp| {np.abs(probs - expected).max():.1e}  "
                f"onnxruntime {statistics.median(rates[dynamo]):8.0f} digits/s (batch 256)  "
                f"{len(files[dynamo]) / 1e6:.2f} MB",
                flush=True,
            )
    if args.output_dir:
        machine = machine_name(torch.device("cpu"))
        print(f"wrote {results_table.write(TABLE, rows, args.output_dir, machine)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
