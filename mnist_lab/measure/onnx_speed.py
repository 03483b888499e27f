"""`python -m mnist_lab.measure onnx`: a run's `onnx` model beside its `model`, on the CPU.

For each model (default: the default CNN and ViT, untrained, each logged with its ONNX
twin in a throw-away store, behind a temperature of 1.5 as a calibrated run's; `--run-id` takes a
finished run's two models instead): the ONNX file's size beside the weights', then digits per
second in one process, at several batch sizes, of

- the pyfunc (`mlflow.pyfunc.load_model(model).predict`: checks, 256 digits a forward pass),
- the onnx flavor's pyfunc (`mlflow.pyfunc.load_model(onnx).predict`: onnxruntime),
- a bare onnxruntime session,

the three alternating, repeat after repeat, so that whatever else shares the cores weighs on
all of them alike; the median of the repeats is printed, and max |Δ probability| between the
pyfunc and onnxruntime. Inputs are real MNIST test digits when MNIST_DATA_DIR has them, random
ones otherwise (throughput does not depend on the pixels). Both runtimes use the process's
threads (torch: torch.get_num_threads(); onnxruntime: its default, one per core).
With `--output-dir results` the rows go to results/onnx.md and .csv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mnist_lab import names, tracking
from mnist_lab.engine.device import cpu_name, machine_name
from mnist_lab.measure import results_table
from mnist_lab.models.build import ModelSpec, build_model
from mnist_lab.models.common import TemperatureScaled

DEFAULT_MODELS = "cnn,vit"
RUNNERS = ("pyfunc", "onnx_pyfunc", "onnxruntime")
TABLE = results_table.Table(
    name="onnx",
    title="ONNX beside the pyfunc: digits a second on the CPU",
    command="python -m mnist_lab.measure onnx --output-dir results",
    header=(
        "Each model (untrained, behind a temperature of 1.5 as a calibrated run's; or a run's "
        "own two models) predicted three ways alternating in one process: the pyfunc "
        "(`mlflow.pyfunc.load_model(model)`), the onnx flavor's pyfunc and a bare onnxruntime "
        "session. A cell is digits a second, the median of n repeats; `max_abs_dp` is the "
        "largest difference in a probability between the pyfunc and onnxruntime. Read the "
        "ratios within a row: the three were timed side by side."
    ),
    columns=("model", "batch", "n", *RUNNERS, "onnx_mb", "weights_mb", "max_abs_dp"),
    key=("model", "batch"),
    formats={
        **{r: "{:,.0f}" for r in RUNNERS},
        "onnx_mb": "{:.2f}",
        "weights_mb": "{:.2f}",
        "max_abs_dp": "{:.1e}",
    },
    packages=("onnxruntime",),
)


def cpu_flags() -> str:
    """The vector extensions of /proc/cpuinfo that decide CPU inference speed."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
    return " ".join(flag for flag in wanted if flag in flags)


def test_digits(n: int) -> np.ndarray:
    """n MNIST test digits (uint8 [n, 28, 28]), or random ones without MNIST_DATA_DIR."""
    try:
        from mnist_lab.data.mnist import load_mnist

        return load_mnist(os.environ.get("MNIST_DATA_DIR")).test_images[:n].numpy()
    except Exception:
        return np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def fresh_models(model: str, digits: np.ndarray) -> str:
    """`model` untrained, behind a temperature, logged as `model` and `onnx`; the run's id."""
    torch.manual_seed(0)
    served = TemperatureScaled(build_model(model), 1.5).eval()
    spec = ModelSpec(model, {}, temperature_scaled=True)
    with tracking.run(run_name=f"onnx-benchmark-{model}"):
        tracking.log_model(served, digits[:8].astype(np.float32) / 255, spec)
        tracking.log_onnx_model(served, digits[:256], spec)
        return tracking.active_run_id()


def compare(label: str, run_id: str, digits: np.ndarray, batches, repeats) -> list[dict]:
    pyfunc = tracking.load_model(tracking.run_model_uri(run_id))
    onnx_pyfunc = tracking.load_onnx_model(tracking.onnx_model_uri(run_id))
    session = onnx_pyfunc.get_raw_model()  # the onnxruntime.InferenceSession
    onnx_bytes = tracking.get_run(run_id).metrics[names.ONNX_SIZE_BYTES]
    state = pyfunc.get_raw_model().state_dict().values()
    weights = sum(t.numel() * t.element_size() for t in state)
    x = digits.astype(np.float32) / 255
    ours = pyfunc.predict(x).filter(like="prob_").to_numpy()
    theirs = onnx_pyfunc.predict(x)["probabilities"]
    worst = float(np.abs(ours - theirs).max())
    print(
        f"{label}: onnx {onnx_bytes / 1e6:.2f} MB (weights {weights / 1e6:.2f} MB); "
        f"max |Δp| pyfunc vs onnxruntime over {len(x)} digits: {worst:.2e}"
    )
    shared = {"model": label, "n": repeats, "onnx_mb": onnx_bytes / 1e6, "max_abs_dp": worst}
    shared["weights_mb"] = weights / 1e6
    rows = []
    print(f"  {'batch':>6} {'pyfunc':>12} {'onnx pyfunc':>12} {'onnxruntime':>12}  digits/s")
    runners = {
        "pyfunc": lambda b: pyfunc.predict(b),
        "onnx pyfunc": lambda b: onnx_pyfunc.predict(b),
        "onnxruntime": lambda b: session.run(None, {"digits": b}),
    }
    for size in batches:
        batch = x[:size]
        times: dict[str, list[float]] = {name: [] for name in runners}
        for run in runners.values():  # warm-up
            run(batch)
        calls = max(1, 2048 // size)  # enough digits a repeat to time small batches
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                for _ in range(calls):
                    run(batch)
                times[name].append((time.perf_counter() - start) / calls)
        rates = [size / statistics.median(times[name]) for name in runners]
        print(f"  {size:>6} " + " ".join(f"{rate:>12,.0f}" for rate in rates), flush=True)
        rows.append({**shared, "batch": size, **dict(zip(RUNNERS, rates, strict=True))})
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lab.measure onnx")
    parser.add_argument("--run-id", help="a finished train run: its model and onnx")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="untrained models, comma list")
    parser.add_argument("--batch", default="1,32,256,2048", help="digits per call, comma list")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", type=Path, default=None, help="write onnx.md/.csv there")
    args = parser.parse_args(argv)
    output_dir = args.output_dir.resolve() if args.output_dir else None
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    digits = test_digits(max(batches))
    print(
        f"cpu: {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores; torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads; onnxruntime "
        f"{__import__('onnxruntime').__version__}; {len(digits)} digits"
    )
    if args.run_id:
        rows = compare(f"run {args.run_id[:8]}", args.run_id, digits, batches, args.repeats)
    else:
        rows = []
        home = Path.cwd()
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
            os.chdir(tmp)
            for model in args.models.split(","):
                rows += compare(model, fresh_models(model, digits), digits, batches, args.repeats)
            os.chdir(home)
    if output_dir:
        machine = machine_name(torch.device("cpu"))
        print(f"wrote {results_table.write(TABLE, rows, output_dir, machine)}")
    return 0
