"""End to end on a small real-MNIST subset: one MLflow run per model with every param, metric,
artifact and a model that reloads and predicts; failures end runs FAILED/KILLED, resume works."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mnist_lab import names, tracking
from mnist_lab.cli import main
from mnist_lab.config import PROJECT_ROOT, load_config
from mnist_lab.engine.checkpoint import load_checkpoint
from mnist_lab.engine.device import amp_dtype
from mnist_lab.errors import LabError
from mnist_lab.train import resume, train

# 50 digits per corruption: every trust metric and plot, a quarter of the corruption work.
SMALL = {
    "epochs": 1,
    "max_train_samples": 300,
    "max_test_samples": 200,
    "val_size": 100,
    "robustness_samples": 50,
}
LARGE_NET = {"robustness_samples": 10}
ARTIFACTS = {
    names.PLOT_CONFUSION_MATRIX,
    names.PLOT_LEARNING_CURVES,
    names.PLOT_SAMPLE_PREDICTIONS,
    names.REPORT_CLASSIFICATION,
    names.CHECKPOINT_LAST,
}
# Every classifier run also says how it fails: corruptions, calibration, explanations.
TRUST_ARTIFACTS = {
    names.PLOT_CORRUPTIONS,
    names.PLOT_ROBUSTNESS,
    names.REPORT_ROBUSTNESS,
    names.PLOT_RELIABILITY,
    names.REPORT_CALIBRATION,
    names.PLOT_EXPLANATIONS,
    names.PLOT_SOURCES,
    names.REPORT_SOURCES,
}
TRUST_METRICS = {
    names.ROBUST_ACCURACY_MEAN,
    names.ROBUST_ERROR_RATIO,
    names.ROBUSTNESS_EVAL_S,
    names.robust_accuracy("fog"),
    names.robust_accuracy("shift"),
    "robust_accuracy_shift_severity_5",
    "robust_accuracy_mean_severity_1",
    names.source_accuracy("handwriting_8px"),
    names.SOURCES_EVAL_S,
    names.TEST_ECE,
    names.TEST_ECE_CALIBRATED,
    names.TEST_BRIER,
    names.TEMPERATURE,
}


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("cnn", {}),
        ("vit", {"depth": 2}),
        # The large convnets take half a minute each: make test runs them, make test-fast not.
        # Their corruption report runs on 10 digits: its forward passes were most of their time.
        pytest.param("vgg16", {"input_size": 32, **LARGE_NET}, marks=pytest.mark.slow),
        pytest.param("alexnet", {"input_size": 32, **LARGE_NET}, marks=pytest.mark.slow),
        ("timm_vit", {"depth": 2}),
        pytest.param("timm:resnet18", LARGE_NET, marks=pytest.mark.slow),
    ],
)
def test_train_logs_a_complete_run(mnist_dir, mlflow_store, model, options):
    import mlflow
    import mlflow.pytorch

    result = train(load_config(model, {**SMALL, **options}))
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == names.DEFAULT_EXPERIMENT
    assert run.data.tags[names.TAG_MODEL] == model
    assert {names.TAG_DEVICE, names.TAG_TORCH_VERSION, names.TAG_GIT_COMMIT} <= set(run.data.tags)
    assert 0 <= float(run.data.tags[names.TAG_OTHER_CPU_SHARE]) <= 1  # report's `alone`
    amp = amp_dtype(torch.device("cpu"), enabled=run.data.params["amp"] == "True")
    precision = "bf16" if amp else "fp32"
    assert run.data.tags[names.TAG_PRECISION] == run.data.params[names.PARAM_PRECISION] == precision
    assert run.data.params["model"] == model
    assert run.data.params["max_train_samples"] == "300"
    assert set(names.EPOCH_METRICS) | set(names.metric_names("final")) | TRUST_METRICS <= set(
        run.data.metrics
    )
    assert 0 <= run.data.metrics[names.TEST_ACCURACY] <= 1
    assert 0 <= run.data.metrics[names.ROBUST_ACCURACY_MEAN] <= 1
    assert run.data.metrics[names.TRAIN_FLOPS_PER_IMAGE] > 0
    assert run.data.metrics[names.TRAIN_TFLOPS_PER_S] > 0
    history = client.get_metric_history(result.run_id, names.VAL_ACCURACY)
    assert [m.step for m in history] == [1]
    assert artifact_paths(client, result.run_id) >= ARTIFACTS | TRUST_ARTIFACTS

    uri = f"runs:/{result.run_id}/{names.MODEL_ARTIFACT}"
    digits = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    served = mlflow.pyfunc.load_model(uri)
    answer = served.predict(digits)
    assert list(answer.columns) == ["digit"] + [f"prob_{k}" for k in range(10)]
    probs = answer.drop(columns="digit").to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    assert (answer["digit"].to_numpy() == probs.argmax(axis=1)).all()
    # The same digits as 0-255 values give the same answer.
    same = served.predict((digits * 255).astype(np.float32))
    assert (same["digit"] == answer["digit"]).all()
    # The raw module, [B, 1, 28, 28] -> logits, with the temperature fitted on validation
    # applied, so served probabilities are calibrated.
    module = served.get_raw_model()
    temperature = run.data.metrics[names.TEMPERATURE]
    assert float(module.temperature) == pytest.approx(temperature)
    with torch.no_grad():
        logits = module(torch.from_numpy(digits).unsqueeze(1))
    assert logits.shape == (4, 10)
    np.testing.assert_allclose(logits.softmax(1).numpy(), probs, rtol=1e-4, atol=1e-6)


def test_cnn_learns_on_a_subset(mnist_dir, mlflow_store):
    result = train(load_config("cnn", {**SMALL, "epochs": 2, "max_train_samples": 2000}))
    assert result.metrics[names.TEST_ACCURACY] > 0.85


class Interrupt:
    def on_epoch_end(self, state, metrics):
        raise KeyboardInterrupt


def test_ctrl_c_kills_the_run_keeps_the_checkpoint_and_resume_finishes_it(mnist_dir, mlflow_store):
    config = load_config("cnn", {**SMALL, "epochs": 2})
    with pytest.raises(KeyboardInterrupt):
        train(config, listeners=(Interrupt(),))
    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id]
    )
    assert run.info.status == "KILLED"
    assert "Ctrl-C" in run.data.tags[names.TAG_FAILURE_REASON]
    checkpoint = client.download_artifacts(run.info.run_id, names.CHECKPOINT_LAST)
    assert load_checkpoint(checkpoint)["epoch"] == 1

    result = resume(run.info.run_id)
    assert result.run_id == run.info.run_id
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, names.VAL_ACCURACY)]
    assert steps == [1, 2]
    assert names.TEST_ACCURACY in run.data.metrics


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_a_signal_mid_training_kills_the_run_cleanly(mnist_dir, mlflow_store, sig):
    """A real signal to `python -m mnist_lab train`: exit 130, run KILLED, checkpoint whole."""
    flags = ["--max-train-samples", "2000", "--val-size", "100", "--max-test-samples", "100"]
    command = [sys.executable, "-m", "mnist_lab", "train", "--epochs", "50", *flags]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    tracking.open_store()  # as the child does: whichever comes first makes the tables
    client = MlflowClient()
    deadline = time.monotonic() + 120
    while not _runs_with_a_checkpoint(client):  # inside training, past epoch 1
        assert process.poll() is None and time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.2)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-2000:]
    (run,) = _runs_with_a_checkpoint(client)
    assert run.info.status == "KILLED"
    assert "Ctrl-C" in run.data.tags[names.TAG_FAILURE_REASON]
    checkpoint = load_checkpoint(client.download_artifacts(run.info.run_id, names.CHECKPOINT_LAST))
    assert 1 <= checkpoint["epoch"] < 50


@pytest.mark.slow
def test_an_ignored_sigint_stays_ignored_and_sigterm_still_ends_the_run(mnist_dir, mlflow_store):
    """A job started with SIGINT ignored (`nohup`, `cmd &` in a script) keeps it ignored, as
    the user who started it asked; `kill` (SIGTERM) still ends the run KILLED."""
    flags = ["--max-train-samples", "2000", "--val-size", "100", "--max-test-samples", "100"]
    command = [sys.executable, "-m", "mnist_lab", "train", "--epochs", "50", *flags]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, preexec_fn=ignore_sigint)
    tracking.open_store()  # as the child does: whichever comes first makes the tables
    client = MlflowClient()
    deadline = time.monotonic() + 120
    while not _runs_with_a_checkpoint(client):
        assert process.poll() is None and time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    time.sleep(3)
    assert process.poll() is None, "an ignored SIGINT stopped the run"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err.decode()[-2000:]
    (run,) = _runs_with_a_checkpoint(client)
    assert run.info.status == "KILLED"


def _runs_with_a_checkpoint(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [r for r in runs if client.list_artifacts(r.info.run_id, names.CHECKPOINT_DIR)]


def test_resuming_a_checkpoint_of_other_layers_is_a_clear_error(mnist_dir, mlflow_store):
    """A checkpoint from before a model changed (the CNN's block order did) names the fix."""
    config = load_config("cnn", SMALL)
    old_layout = {"features.0.1.weight": torch.ones(16)}  # BN was block item 1 before
    with pytest.raises(LabError, match=r"(?s)run abc.*does not fit the .cnn. model.*new run"):
        train(config, resume_run_id="abc", checkpoint={"model": old_layout})
    assert MlflowClient().search_experiments()[0].name == "Default"  # no run started
    assert not MlflowClient().search_runs(["0"])


class Poison:
    def on_epoch_end(self, state, metrics):
        with torch.no_grad():
            for p in state.model.parameters():
                p.fill_(float("nan"))


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(mnist_dir, mlflow_store):
    from mnist_lab.engine.loop import NonFiniteLossError

    with pytest.raises(NonFiniteLossError):
        train(load_config("cnn", {**SMALL, "epochs": 3}), listeners=(Poison(),))
    client = MlflowClient()
    (run,) = client.search_runs(
        [client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id]
    )
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags[names.TAG_FAILURE_REASON]
    checkpoint = load_checkpoint(client.download_artifacts(run.info.run_id, names.CHECKPOINT_LAST))
    assert checkpoint["epoch"] == 1
    assert all(
        torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point()
    )


def test_joins_the_run_mlflow_run_created(mnist_dir, mlflow_store, monkeypatch):
    client = MlflowClient()
    experiment_id = client.create_experiment("launched")
    launched = client.create_run(experiment_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", launched.info.run_id)
    assert main(["train", "--model", "cnn", *flags(SMALL)]) == 0
    runs = client.search_runs([experiment_id])
    assert [r.info.run_id for r in runs] == [launched.info.run_id]
    assert runs[0].info.status == "FINISHED"
    assert names.TEST_ACCURACY in runs[0].data.metrics


def flags(settings: dict) -> list[str]:
    return [part for k, v in settings.items() for part in (f"--{k.replace('_', '-')}", str(v))]


@pytest.mark.parametrize("amp", [True, False])
def test_the_precision_is_a_param_and_the_cpus_units_are_in_the_machine_tag(
    mnist_dir, mlflow_store, monkeypatch, amp
):
    """On a CPU whose flags say AMX, amp trains in bf16 and `--amp false` in fp32; the run says
    which as a param (so the two are two configurations) and names the units it ran on."""
    from mnist_lab.engine import device as engine_device

    monkeypatch.setattr(engine_device, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    result = train(load_config("cnn", {**SMALL, "amp": amp, "robustness_samples": 0}))
    run = MlflowClient().get_run(result.run_id)
    precision = "bf16" if amp else "fp32"
    assert run.data.params[names.PARAM_PRECISION] == run.data.tags[names.TAG_PRECISION] == precision
    assert ", AMX, " in run.data.tags[names.TAG_MACHINE]
