"""`python -m mnist_lab.measure tracking-outage`: does an outage of the tracking server slow a
run down, or cost it anything?

Two `mlflow server`s (SQLite behind each, artifacts proxied) in a temporary folder and two
`mnist-lab train` runs started together, one on each server, alike but for the outage: the
second run's server is stopped once the run has logged epoch `--stop-after` and started again
`--outage-s` seconds later. The runs share the machine, so both see the same load. A run whose
server was still away when it ended (past `MNIST_LAB_STORE_WAIT_S`) exits non-zero; its spool
is then sent with `mnist-lab runs --sync`, as a user would. Prints, for each run, its epoch
times (mean ± sd; the outage run's epochs trained while its server was away marked *), its exit
status and its state on its server: status, the steps of `val_accuracy`, test accuracy, whether
its `model` loads and whether it has its `onnx` model. `--output-dir` also writes
tracking-outage.md and tracking-outage.csv (a row a run, results_table.py) there.

    python -m mnist_lab.measure tracking-outage --outage-s 600 --epochs 8 --output-dir results
    python -m mnist_lab.measure tracking-outage --outage-s 20 --epochs 3 \\
        --max-train-samples 2000     # a check that it works: minutes on 2 shared cores

With `MNIST_LAB_STORE_WAIT_S=0` the outage run gives up on its server at its end at once (if
the server is still away then): the path where `runs --sync` sends its spool.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mnist_lab.measure import results_table

PROG = "python -m mnist_lab.measure tracking-outage"
TABLE = results_table.Table(
    name="tracking-outage",
    title="A tracking server that goes away during training",
    command=f"{PROG} --output-dir results",
    header=(
        "How a run on `mlflow server` trains through an outage of the server "
        "([docs/guarantees.md](../docs/guarantees.md#a-tracking-server-that-goes-away)): two "
        "`mnist-lab train` runs started together, each on its own `mlflow server` (SQLite behind "
        "it, artifacts proxied) on the same machine, alike but for the outage: the second one's "
        "server is stopped once the run has logged epoch `stop_after` and started again "
        "`outage_s` seconds later (`away_s`: until it answered). A run whose server was still "
        "away at its end exits non-zero and is sent by `mnist-lab runs --sync`. n is a run's "
        "epochs; in `epoch_times_s` the epochs trained, at least in part, while the server was "
        "away are marked *. The two runs share the machine, so both see the same load."
    ),
    columns=(
        "run",
        "settings",
        "n",
        "epoch_times_s",
        "mean_epoch_s",
        "sd_epoch_s",
        "away_epochs_mean_s",
        "wall_s",
        "away_s",
        "exit",
        "status",
        "val_steps",
        "test_accuracy",
        "model",
        "onnx",
    ),
    key=("run", "settings"),
    formats={
        "mean_epoch_s": "{:.1f}",
        "sd_epoch_s": "{:.1f}",
        "away_epochs_mean_s": "{:.1f}",
        "wall_s": "{:.0f}",
        "away_s": "{:.0f}",
        "test_accuracy": "{:.4f}",
    },
)
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ ")  # train.ConsoleReporter's line


class Server:
    """`mlflow server` on a free loopback port over a SQLite file in `folder`."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True)
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}"]
        command += ["--artifacts-destination", str(self.folder / "artifacts")]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with (self.folder / "server.log").open("a") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, env=env
            )
        deadline = time.monotonic() + 180
        while not _answers(f"{self.uri}/health"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = (self.folder / "server.log").read_text()[-2000:]
                raise RuntimeError(f"mlflow server on port {self.port} did not start: {tail}")
            time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=60)
            self.process = None


@dataclass
class Run:
    """One `mnist-lab train` on its own server, and what it left there."""

    name: str
    server: Server
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    wall_s: float = 0.0
    exit_status: int | None = None
    synced: str = ""  # `runs --sync`'s last line, for a run that needed it
    run_id: str = ""
    status: str = "no run"
    epoch_times: list[tuple[int, float]] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    test_accuracy: float | None = None
    model: str = "none"
    onnx: str = "none"

    def epochs_logged(self) -> int:
        found = EPOCH_LINE.findall(self.log.read_text()) if self.log.exists() else []
        return max(map(int, found), default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--outage-s", type=float, default=600.0, help="default 600 (10 min)")
    parser.add_argument("--stop-after", type=int, default=2, help="the epoch (default 2)")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-train-samples", type=int, default=5_000)
    parser.add_argument("--max-test-samples", type=int, default=1_000)
    parser.add_argument("--robustness-samples", type=int, default=20)
    parser.add_argument("--output-dir", type=Path, default=None, help="e.g. results")
    args = parser.parse_args(argv)
    if not 1 <= args.stop_after < args.epochs:
        parser.error(f"--stop-after {args.stop_after}: give an epoch from 1 to --epochs - 1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    from mnist_lab.engine.device import machine_name, resolve_device
    from mnist_lab.measure.hardware import hardware

    machine = hardware(resolve_device("auto"))
    print(f"hardware: {machine}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="mnist-lab-outage-"))
    runs = [
        Run(name, Server(folder / name), folder / f"{name}.log") for name in ("steady", "outage")
    ]
    outage = runs[1]
    away: set[int] = set()  # the outage run's epochs trained, at least in part, while away
    outage_s = 0.0  # from the server's stop until it answers again
    try:
        for run in runs:
            run.server.start()
        for run in runs:
            _start_training(run, args, folder)
        while outage.epochs_logged() < args.stop_after and outage.process.poll() is None:
            time.sleep(0.2)
        outage.server.stop()
        stopped, first = time.monotonic(), outage.epochs_logged() + 1
        print(f"outage: server stopped after epoch {first - 1}", flush=True)
        while time.monotonic() - stopped < args.outage_s:
            _reap(runs)
            time.sleep(0.2)
        away = set(range(first, min(outage.epochs_logged() + 1, args.epochs) + 1))
        outage.server.start()
        outage_s = time.monotonic() - stopped
        print(f"outage: server back after {outage_s:.0f} s", flush=True)
        while any(run.exit_status is None for run in runs):
            _reap(runs)
            time.sleep(0.2)
        for run in runs:
            if run.exit_status != 0:
                run.synced = _sync(run, folder)
            _read_back(run)
    finally:
        for run in runs:
            if run.process is not None and run.process.poll() is None:
                run.process.kill()
            run.server.stop()
    rows = _rows(runs, away, outage_s, args)
    for row in rows:
        print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    if args.output_dir is not None:
        where = machine_name(resolve_device("auto"))
        changed = {
            k: v for k, v in vars(args).items() if k != "output_dir" and v != parser.get_default(k)
        }  # a shortened check is not the full recipe: its rows say so
        recipe = ", ".join(f"{k}={v}" for k, v in changed.items()) or results_table.FULL
        print(f"wrote {results_table.write(TABLE, rows, args.output_dir, where, recipe)}")
    print(f"logs and stores: {folder}", file=sys.stderr)
    return 0


def _start_training(run: Run, args: argparse.Namespace, folder: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": run.server.uri, "PYTHONUNBUFFERED": "1"}
    env["MNIST_LAB_SPOOL_DIR"] = str(folder / f"{run.name}-spool")
    command = [sys.executable, "-m", "mnist_lab", "train", "--model", args.model]
    command += ["--run-name", f"{run.name}-{args.model}", "--epochs", str(args.epochs)]
    command += ["--max-train-samples", str(args.max_train_samples)]
    command += ["--max-test-samples", str(args.max_test_samples)]
    command += ["--robustness-samples", str(args.robustness_samples)]
    with run.log.open("w") as log:
        run.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    run.started = time.monotonic()


def _reap(runs: list[Run]) -> None:
    for run in runs:
        if run.exit_status is None and run.process.poll() is not None:
            run.exit_status = run.process.returncode
            run.wall_s = time.monotonic() - run.started


def _sync(run: Run, folder: Path) -> str:
    """`mnist-lab runs --sync` for `run`'s spool, as a user would send it; its last line."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": run.server.uri}
    env["MNIST_LAB_SPOOL_DIR"] = str(folder / f"{run.name}-spool")
    done = subprocess.run(
        [sys.executable, "-m", "mnist_lab", "runs", "--sync"],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return f"exit {done.returncode}: {lines[-1] if lines else ''}"


def _read_back(run: Run) -> None:
    """What `run` left on its server: found by its name (the store holds it alone)."""
    from mnist_lab import names, tracking
    from mnist_lab.errors import LabError

    os.environ["MLFLOW_TRACKING_URI"] = run.server.uri
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    found = tracking.search_runs(tracking.experiment_name())
    if not found:
        return
    record = found[0]
    run.run_id, run.status = record.run_id, record.status
    run.epoch_times = tracking.metric_history(run.run_id, names.EPOCH_TIME_S)
    run.val_steps = [step for step, _ in tracking.metric_history(run.run_id, names.VAL_ACCURACY)]
    run.test_accuracy = record.metrics.get(names.TEST_ACCURACY)
    try:
        tracking.load_model(f"runs:/{run.run_id}/{names.MODEL_ARTIFACT}")
        run.model = "loads"
    except LabError as err:
        run.model = f"none ({str(err)[:80]})"
    try:
        tracking.onnx_model_uri(run.run_id)
        run.onnx = "yes"
    except LabError:
        run.onnx = "none"


def _rows(
    runs: list[Run], away: set[int], outage_s: float, args: argparse.Namespace
) -> list[dict[str, object]]:
    """A row a run: its epochs (those trained while its server was away marked *), their
    spread, and what its server holds of it."""
    settings = (
        f"{args.model}, {args.epochs} epochs, {args.max_train_samples} train digits, "
        f"outage {args.outage_s:g} s after epoch {args.stop_after}"
    )
    rows = []
    for run in runs:
        outage = run.name == "outage"
        seconds = [s for _, s in run.epoch_times]
        during = [s for e, s in run.epoch_times if outage and e in away]
        rows.append(
            {
                "run": "outage" if outage else "server up throughout",
                "settings": settings,
                "n": len(seconds),
                "epoch_times_s": ", ".join(
                    f"{s:.1f}*" if outage and e in away else f"{s:.1f}" for e, s in run.epoch_times
                ),
                "mean_epoch_s": statistics.mean(seconds) if seconds else float("nan"),
                "sd_epoch_s": statistics.stdev(seconds) if len(seconds) > 1 else float("nan"),
                "away_epochs_mean_s": statistics.mean(during) if during else float("nan"),
                "wall_s": run.wall_s,
                "away_s": outage_s if outage else float("nan"),
                "exit": str(run.exit_status)
                + (f"; runs --sync {run.synced}" if run.synced else ""),
                "status": run.status,
                "val_steps": f"{min(run.val_steps)}-{max(run.val_steps)}"
                if run.val_steps
                else "none",
                "test_accuracy": run.test_accuracy
                if run.test_accuracy is not None
                else float("nan"),
                "model": run.model,
                "onnx": run.onnx,
            }
        )
    return rows


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
