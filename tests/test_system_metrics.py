"""System metrics: every run logs the machine's use over its time (MLflow's `system/*`), unless
`system_metrics` is off."""

import pytest
from mlflow.tracking import MlflowClient

from mnist_lab.cli import main
from mnist_lab.config import load_config
from mnist_lab.train import train

# Enough digits for a run of a few seconds; the monitor samples every 0.2 s here (10 s by default).
SHORT = {
    "epochs": 2,
    "max_train_samples": 1000,
    "max_test_samples": 100,
    "val_size": 200,
    "robustness_samples": 0,
}


@pytest.fixture
def fast_sampling(monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")


def system_metrics(run_id: str) -> set[str]:
    return {k for k in MlflowClient().get_run(run_id).data.metrics if k.startswith("system/")}


def test_a_run_logs_system_metrics(mnist_dir, mlflow_store, fast_sampling):
    import psutil  # noqa: F401  (a pinned dependency: MLflow logs nothing without it)

    result = train(load_config("cnn", SHORT))
    logged = system_metrics(result.run_id)
    for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        assert f"system/{name}" in logged, logged
    assert any(k.startswith("system/disk_") for k in logged)
    assert any(k.startswith("system/network_") for k in logged)
    history = MlflowClient().get_metric_history(result.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and [m.step for m in history] == list(range(len(history)))


def test_system_metrics_false_logs_none(mnist_dir, mlflow_store, fast_sampling, capsys):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in SHORT.items()]
    assert main(["train", "--model", "cnn", *flags, "--system-metrics", "false"]) == 0
    run_id = capsys.readouterr().out.split()[1].rstrip(":")
    assert system_metrics(run_id) == set()
    assert MlflowClient().get_run(run_id).data.params["system_metrics"] == "False"
