"""System metrics: every run logs the machine's use over its time (MLflow's `system/*`), unless
`system_metrics` is off."""

import numpy as np
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


@pytest.mark.parametrize(
    ("on", "off", "said"),
    [
        ([10.0, 10.4, 10.2], [9.0, 9.3, 9.1], "system metrics slow training beyond noise"),
        ([10.0, 14.0, 8.0], [9.0, 13.0, 11.0], "tie: their cost is inside the noise"),
    ],
)
def test_the_cost_bench_alternates_the_arms_and_compares_them_by_welch(
    monkeypatch, tmp_path, on, off, said
):
    """`python -m mnist_lab.measure system-metrics` with the training faked: a warm-up, then
    on, off, off, on, on, off; each arm's t interval and on − off by Welch's t, as scipy's."""
    from scipy import stats

    from mnist_lab import names
    from mnist_lab.measure import results_table
    from mnist_lab.measure import system_metrics as bench

    runs: list[tuple[bool, str]] = []
    seconds = {True: iter(on), False: iter(off)}

    class Result:
        def __init__(self, run_id: str, train_time_s: float) -> None:
            self.run_id, self.epochs = run_id, 1
            self.metrics = {names.TRAIN_TIME_S: train_time_s}

    def fake_train(config, tags):
        runs.append((config.system_metrics, tags["bench_scenario"]))
        warm_up = len(runs) == 1
        assert (config.max_train_samples == 2560) == warm_up
        return Result(f"run{len(runs)}", 1.0 if warm_up else next(seconds[config.system_metrics]))

    monkeypatch.setattr("mnist_lab.train.train", fake_train)
    # run3 shared its cores; only the `on` runs log samples.
    monkeypatch.setattr(bench, "run_figures", lambda run_id: (0.5 if run_id == "run3" else 0.02, 0))
    monkeypatch.setattr(bench, "start_bench", lambda device: "cpu")
    assert bench.main(["--output-dir", str(tmp_path)]) == 0

    assert runs[0] == (False, "system-metrics/warm-up")
    assert [flag for flag, _ in runs[1:]] == [True, False, False, True, True, False]
    rows = {r["arm"]: r for r in results_table.read(tmp_path / "system-metrics.csv")}
    arm_on, arm_off, difference = rows[bench.ON], rows[bench.OFF], rows[bench.DIFFERENCE]
    assert arm_on["n"] == arm_off["n"] == "3" and arm_on["recipe"] == "full"
    low, high = stats.t.interval(0.95, 2, loc=np.mean(on), scale=stats.sem(on))
    assert float(arm_on["ci95_low"]) == pytest.approx(low)
    assert float(arm_on["ci95_high"]) == pytest.approx(high)
    assert arm_on["run_ids"] == "run2, run5, run6" and arm_off["alone"] == "2 of 3"
    welch = stats.ttest_ind(on, off, equal_var=False)
    interval = welch.confidence_interval(0.95)
    assert float(difference[names.TRAIN_TIME_S]) == pytest.approx(np.mean(on) - np.mean(off))
    assert float(difference["ci95_low"]) == pytest.approx(interval.low, rel=1e-6)
    assert float(difference["ci95_high"]) == pytest.approx(interval.high, rel=1e-6)
    assert float(difference["p_value"]) == pytest.approx(welch.pvalue, rel=1e-6)
    assert difference["verdict"].startswith(said) and difference["alone"] == "5 of 6"
    assert said in (tmp_path / "system-metrics.md").read_text()
