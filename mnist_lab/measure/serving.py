"""`python -m mnist_lab.measure serving`: `mlflow models serve` under load, then bad payloads.

Starts `mlflow models serve` on 127.0.0.1 for a logged or registered model (default: a fresh,
untrained default CNN logged in a throw-away store; throughput does not depend on the weights),
drives it from concurrent clients for a bounded time per setting and prints requests and
digits per second, p50/p99 latency and the error count. Then it sends malformed payloads
(wrong shapes, strings, NaN, empty, not JSON, a batch over the limit, ...) and checks that each
gets a 4xx with a message and that the server still answers. Clients share the machine with the
server: the figures are of both, on the CPU printed first. With `--output-dir results` the
load rows go to results/serving.md and .csv, with the count of malformed payloads mishandled.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import torch

from mnist_lab import tracking
from mnist_lab.engine.device import machine_name
from mnist_lab.inference import MAX_BATCH
from mnist_lab.measure import results_table
from mnist_lab.measure.hardware import hardware
from mnist_lab.models.build import ModelSpec

STARTUP_TIMEOUT_S = 180.0
QUICK_SECONDS = 3.0
TABLE = results_table.Table(
    name="serving",
    title="`mlflow models serve` under concurrent clients",
    command="python -m mnist_lab.measure serving --output-dir results",
    header=(
        "`mlflow models serve` on 127.0.0.1 (an untrained default CNN unless a row's model says "
        "otherwise: throughput does not depend on the weights), driven by concurrent clients "
        "posting batches of random digits for `seconds` a setting; n is the requests answered. "
        "The clients share the machine with the server: the figures are of both. "
        "`bad_payloads` counts the malformed payloads (wrong shapes, strings, NaN, empty, not "
        "JSON, a batch over the limit) not answered with a 4xx or that stopped the server."
    ),
    columns=(
        "model",
        "workers",
        "clients",
        "batch",
        "seconds",
        "n",
        "requests_per_s",
        "digits_per_s",
        "p50_ms",
        "p99_ms",
        "errors",
        "bad_payloads",
    ),
    key=("model", "workers", "clients", "batch"),
    formats={
        "seconds": "{:.0f}",
        "requests_per_s": "{:.1f}",
        "digits_per_s": "{:,.0f}",
        "p50_ms": "{:.1f}",
        "p99_ms": "{:.1f}",
    },
)


@dataclass
class Load:
    clients: int
    batch: int
    requests: int
    seconds: float
    errors: int
    latencies_ms: list[float]

    def line(self) -> str:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if self.latencies_ms else (0, 0)
        rate = self.requests / self.seconds
        return (
            f"{self.clients:>7} {self.batch:>5} {rate:>9.1f} {rate * self.batch:>9.0f} "
            f"{p50:>8.1f} {p99:>8.1f} {self.errors:>6}"
        )

    def row(self) -> dict:
        p50, p99 = np.percentile(self.latencies_ms, [50, 99]) if self.latencies_ms else (0, 0)
        rate = self.requests / self.seconds
        return {
            "clients": self.clients,
            "batch": self.batch,
            "seconds": self.seconds,
            "n": self.requests,
            "requests_per_s": rate,
            "digits_per_s": rate * self.batch,
            "p50_ms": p50,
            "p99_ms": p99,
            "errors": self.errors,
        }


def drive(url: str, clients: int, batch: int, seconds: float) -> Load:
    """`clients` threads posting batches of `batch` random digits for `seconds` seconds."""
    digits = np.random.default_rng(0).integers(0, 256, (batch, 28, 28)).tolist()
    body = json.dumps({"inputs": digits})
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    ok = session.post(url, data=body, headers=JSON, timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                elapsed = 1000 * (time.perf_counter() - start)
                with lock:
                    latencies.append(elapsed)
                    errors[0] += not ok

    threads = [threading.Thread(target=client) for _ in range(clients)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(clients, batch, len(latencies), time.monotonic() - began, errors[0], latencies)


JSON = {"Content-Type": "application/json"}


def bad_payloads() -> dict[str, tuple[str, dict[str, str]]]:
    """Name → (body, headers) of requests a server must refuse with a 4xx and survive."""
    zeros = np.zeros((2, 28, 28))
    cases = {
        "wrong image shape [2, 27, 28]": {"inputs": np.zeros((2, 27, 28)).tolist()},
        "flat rows [2, 784]": {"inputs": np.zeros((2, 784)).tolist()},
        "strings": {"inputs": [[["a"] * 28] * 28]},
        "empty batch": {"inputs": []},
        "no 'inputs' key": {"wrong_key": [1, 2]},
        "nested object": {"inputs": {"a": {"b": 1}}},
        "negative pixels": {"inputs": (zeros - 5).tolist()},
        f"batch of {MAX_BATCH + 1} (over the limit)": {
            "inputs": np.zeros((MAX_BATCH + 1, 28, 28), dtype=np.uint8).tolist()
        },
    }
    payloads = {name: (json.dumps(body), JSON) for name, body in cases.items()}
    nan = zeros.copy()
    nan[0, 0, 0] = float("nan")
    payloads["NaN pixel"] = (json.dumps({"inputs": nan.tolist()}), JSON)  # Python writes NaN
    payloads["not JSON"] = ("not json at all", JSON)
    payloads["truncated JSON"] = ('{"inputs": [[[0, 0', JSON)
    payloads["wrong content type"] = ("0,0,0", {"Content-Type": "text/plain"})
    return payloads


def fuzz(url: str) -> list[tuple[str, int, str, bool]]:
    """Each bad payload: (name, status, message start, server still answers a good request)."""
    good = json.dumps({"inputs": np.zeros((1, 28, 28)).tolist()})
    results = []
    for name, (body, headers) in bad_payloads().items():
        response = requests.post(url, data=body, headers=headers, timeout=120)
        try:
            message = str(response.json().get("message", ""))
        except ValueError:
            message = response.text
        alive = requests.post(url, data=good, headers=JSON, timeout=60).status_code == 200
        reason = message.rsplit("Error:", 1)[-1]  # MLflow prefixes the data it could not use
        results.append((name, response.status_code, " ".join(reason.split())[:110], alive))
    return results


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str, timeout: float = 5.0) -> bool:
    """Whether a server polled while it starts is ready: `url` answers 2xx within `timeout` s.

    A starting server may accept the connection and answer late (a loaded core): a read
    timeout means "not ready yet", like a refused connection.
    """
    try:
        return requests.get(url, timeout=timeout).ok
    except (requests.ConnectionError, requests.Timeout):
        return False


def serve(model_uri: str, workers: int, log: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow models serve` of `model_uri` on 127.0.0.1; returns the process and its URL."""
    port = free_port()
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow_cli, "models", "serve", "-m", model_uri, "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if answers(f"{url}/ping"):
            return process, url
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"mlflow models serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def fresh_model(folder: Path) -> str:
    """The default CNN, untrained, logged in a store in `folder`; its runs:/ URI."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)
    spec = ModelSpec("cnn", {})
    with tracking.run(run_name="serving-benchmark-model"):
        example = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
        tracking.log_model(spec.build(), example, spec)
        return tracking.run_model_uri(tracking.active_run_id())


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lab.measure serving")
    parser.add_argument("--model-uri", help="default: a fresh default CNN in a temporary store")
    parser.add_argument("--clients", default="1,4,8", help="concurrent clients, comma list")
    parser.add_argument("--batch", default="1,32", help="digits per request, comma list")
    parser.add_argument("--seconds", type=float, default=10.0, help="per setting")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--output-dir", type=Path, default=None, help="write serving.md/.csv there")
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SECONDS:g} s a setting, 1 and 4 clients"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.clients = QUICK_SECONDS, "1,4"
    output_dir = args.output_dir.resolve() if args.output_dir else None
    print(f"hardware: {hardware(torch.device('cpu'))}")
    home, loads = Path.cwd(), []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uri = args.model_uri or fresh_model(folder)
        process, url = serve(uri, args.workers, folder / "serve.log")
        try:
            invocations = f"{url}/invocations"
            print(f"model {uri}, {args.workers} worker(s), {args.seconds:g} s per setting")
            print("clients batch     req/s  digits/s  p50 ms   p99 ms  errors")
            for batch in _ints(args.batch):
                for clients in _ints(args.clients):
                    loads.append(drive(invocations, clients, batch, args.seconds))
                    print(loads[-1].line(), flush=True)
            print("malformed payloads (status, message, server answers after):")
            failures = 0
            for name, status, message, alive in fuzz(invocations):
                ok = 400 <= status < 500 and alive
                failures += not ok
                print(f"  {'ok ' if ok else 'BAD'} {status} {name}: {message}")
            print(f"{failures} payload(s) not answered with a 4xx or killing the server")
        finally:
            process.terminate()
            process.wait(timeout=30)
            os.chdir(home)
    if output_dir:
        model = args.model_uri or "untrained default CNN"
        shared = {"model": model, "workers": args.workers, "bad_payloads": failures}
        rows = [{**shared, **load.row()} for load in loads]
        machine = machine_name(torch.device("cpu"))
        print(f"wrote {results_table.write(TABLE, rows, output_dir, machine)}")
    return 1 if failures else 0
