"""benchmark: every model a child run of one parent; a failing model is a failed row."""

import importlib
import json
import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.cli import main
from mnist_lab.measure.__main__ import SCRIPTS as MEASURE_SCRIPTS

TINY = ["--epochs", "1", "--max-train-samples", "200", "--max-test-samples", "100"]


def test_a_failing_model_is_recorded_and_the_others_still_run(
    mnist_dir, mlflow_store, tmp_path, monkeypatch, capsys
):
    import mnist_lab.train

    real_fit = mnist_lab.train.fit

    def fit(state, *args, **kwargs):
        if state.config.model == "vit":
            raise RuntimeError("boom in vit")
        return real_fit(state, *args, **kwargs)

    monkeypatch.setattr(mnist_lab.train, "fit", fit)
    # benchmark has no robustness flag; the corruption suite is not what this test is about.
    from mnist_lab.comparison import benchmark as bench
    from mnist_lab.config import load_config

    no_suite = {"robustness_samples": 0}
    monkeypatch.setattr(bench, "load_config", lambda m, o: load_config(m, {**o, **no_suite}))
    out = tmp_path / "out"
    argv = ["benchmark", "--models", "vit,cnn", *TINY, "--val-size", "100"]
    assert main([*argv, "--output-dir", str(out)]) == 0

    client = MlflowClient()
    experiment = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT).experiment_id
    (parent,) = client.search_runs([experiment], "tags.kind = 'benchmark'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_kind = {(r.data.tags[names.TAG_KIND], r.data.tags.get(names.TAG_MODEL)): r for r in children}
    assert set(by_kind) == {("train", "cnn"), ("train", "vit"), ("comparison", None)}
    assert by_kind["train", "cnn"].info.status == "FINISHED"
    assert by_kind["train", "vit"].info.status == "FAILED"
    assert by_kind["train", "cnn"].data.params["max_train_samples"] == "200"
    assert by_kind["train", "cnn"].data.params["robustness_samples"] == "0"

    table = pd.read_csv(out / "comparison.csv").set_index("model")
    assert list(table.index) == ["cnn", "vit"]  # trained ones first, then the failures
    assert table.loc["cnn", "status"] == "finished"
    assert table.loc["vit", "status"] == "failed: RuntimeError: boom in vit"
    assert table.loc["vit", "run_ids"] == by_kind["train", "vit"].info.run_id
    assert pd.isna(table.loc["vit", names.TEST_ACCURACY])
    assert "failed: RuntimeError: boom in vit" in capsys.readouterr().out
    assert "| vit | – |" in (out / "comparison.md").read_text()


def test_benchmark_trains_the_tables_benchmark_models():
    from mnist_lab.models import ARCHITECTURES, benchmark_models

    assert benchmark_models() == ["cnn", "vgg16", "alexnet", "vit", "faster_rcnn"]
    assert not ARCHITECTURES["timm_vit"].benchmark  # a cross-check of vit, not a lab model


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "cnn,resnet"], "unknown model 'resnet'; valid models: cnn"),
        (["--models", "cnn", "--epochs", "0"], "epochs=0 must be >= 1"),
    ],
)
def test_bad_benchmark_options_exit_1_before_any_run(mlflow_store, capsys, argv, message):
    assert main(["benchmark", *argv]) == 1
    assert message in capsys.readouterr().err
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


@pytest.mark.slow
def test_the_mlproject_entry_points_benchmark_compare_register(mnist_dir, mlflow_store, tmp_path):
    """The issue's user flow through `mlflow run`, empty-string defaults included."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mnist_lab.config import PROJECT_ROOT

    client = MlflowClient()
    experiment_id = client.create_experiment("mnist-lab", artifact_location=str(tmp_path / "art"))
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

    def mlflow_run(entry: str, **params: str) -> str:
        command = [mlflow_cli, "run", str(PROJECT_ROOT), "-e", entry, "--env-manager", "local"]
        command += ["--experiment-name", "mnist-lab"]
        for key, value in params.items():
            command += ["-P", f"{key}={value}"]
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    out = tmp_path / "bench"
    printed = mlflow_run(
        "benchmark",
        models="cnn",
        epochs="1",
        max_train_samples="200",
        max_test_samples="100",
        output_dir=str(out),
    )
    assert "| cnn |" in printed and (out / "comparison.html").is_file()
    (parent,) = client.search_runs([experiment_id], "tags.kind = 'benchmark'")
    assert parent.info.status == "FINISHED"

    printed = mlflow_run("compare", output_dir=str(tmp_path / "again"))
    assert "| cnn |" in printed
    comparisons = client.search_runs([experiment_id], "tags.kind = 'comparison'")
    assert len(comparisons) == 2 and all(r.info.status == "FINISHED" for r in comparisons)

    printed = mlflow_run("register", model="cnn")
    assert "as mnist-cnn version 1; it is now @champion" in printed


def test_the_training_bench_prints_each_runs_share_of_the_machines_matmul_peak(monkeypatch):
    """`python -m mnist_lab.measure training`: the peak is a real timed matmul, and each row
    shows the run's TFLOP/s as a fraction of the peak in the run's dtype."""
    import torch

    from mnist_lab.measure import training
    from mnist_lab.measure.hardware import peak_tflops

    assert peak_tflops(torch.device("cpu"), torch.float32, repeats=1) > 0
    metrics = {
        names.TEST_ACCURACY: 0.99,
        names.TRAIN_TIME_S: 10.0,
        names.TRAIN_FLOPS_PER_IMAGE: 3e6,
        names.TRAIN_TFLOPS_PER_S: 0.05,
    }

    class Result:
        run_id, epochs = "r1", 2

    Result.metrics = metrics
    monkeypatch.setattr("mnist_lab.train.train", lambda config, tags: Result())
    monkeypatch.setattr(training, "peak_tflops", lambda device, dtype: 0.5)
    row = training.run_scenario("cnn-1-epoch", "cpu")
    assert row["utilisation"] == pytest.approx(0.1) and row["mean_epoch_time_s"] == 5.0
    assert "3.0 MFLOP/img  0.050 TFLOP/s = 10.0 % of 0.50" in training.format_row(row)


@pytest.mark.slow  # four real trainings, in this process
def test_time_to_accuracy_runs_the_peer_beside_cnn_fast_and_times_each_model_to_its_target(
    mnist_dir, mlflow_store, tmp_path, monkeypatch, capsys
):
    """Real runs on a small slice: the peer and cnn_fast pair, one model that reaches its
    target mid-epoch and one that cannot (a target of 100 %)."""
    from mnist_lab.measure import time_to_accuracy as tta

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "mnist-lab-bench")  # main's default, unleaked
    small = {"max_train_samples": 1000, "max_test_samples": 200, "val_size": 200}
    monkeypatch.setattr(tta, "COMMON", {**tta.COMMON, **small})
    monkeypatch.setitem(
        tta.TARGETS,
        "cnn",
        tta.Target(0.5, 45, "experiments/cnn_fast.yaml", {"epochs": 3, "val_checks_per_epoch": 2}),
    )
    monkeypatch.setitem(tta.TARGETS, "vit", tta.Target(1.0, 204, None, {"epochs": 1, "depth": 1}))
    out = tmp_path / "tta.json"
    argv = ["--models", "cnn", "vit", "--repeats", "2", "--seeds", "1", "--precisions", "fp32"]
    assert tta.main([*argv, "--json", str(out), "--output-dir", str(tmp_path)]) == 0

    figures = json.loads(out.read_text())
    pair = figures["peer"]
    assert pair["peer"]["seconds"] > 0 and len(pair["cnn_fast"]["all_seconds"]) == 2
    assert pair["ratio"] == pytest.approx(pair["cnn_fast"]["seconds"] / pair["peer"]["seconds"])
    assert pair["versus"]["peer"].startswith("time ")  # two seeds a side: the lab's test
    cnn, vit = figures["runs"]
    assert cnn["reached"] and cnn["epochs_to_target"] <= 3 and cnn["precision"] == "fp32"
    assert cnn["config"].endswith("cnn_fast.yaml")
    assert not vit["reached"] and math.isnan(vit["time_to_target_s"])
    client = MlflowClient()
    run = client.get_run(cnn["run_id"])
    assert run.data.metrics[names.TIME_TO_TARGET_S] == pytest.approx(cnn["time_to_target_s"])
    assert run.data.params["target_val_accuracy"] == "0.5"
    assert run.data.params["amp"] == "False" and run.data.params["stop_at_target"] == "False"
    assert len(client.get_metric_history(cnn["run_id"], names.VAL_ACCURACY)) == 3  # all epochs
    assert names.TIME_TO_TARGET_S not in client.get_run(vit["run_id"]).data.metrics
    for name in ("peer", "peer_channels_last"):
        assert client.get_run(pair[name]["run_id"]).data.tags["bench_scenario"] == name
    printed = capsys.readouterr().out
    assert "cnn_fast / the published peer: " in printed and "NOT REACHED" in printed
    page = (tmp_path / "time-to-accuracy.md").read_text()
    assert "| cnn | cnn_fast.yaml | fp32 | 1 |" in page and "| 0 of 1 |" in page


def test_time_to_accuracy_rows_compare_bf16_with_fp32_over_seeds():
    """A row per model and precision: the mean time only where every seed reached the target,
    and bf16's test accuracy against fp32's by Welch's t over the seeds."""
    from mnist_lab.measure import time_to_accuracy as tta

    def run(precision, seed, accuracy, seconds):
        return {
            "model": "alexnet", "config": "alexnet_fast.yaml", "precision": precision,
            "seed": seed, "target": 0.98, "lab_t4_s": 100.0, "reached": seconds is not None,
            "time_to_target_s": seconds or math.nan, "epochs_to_target": 0.5,
            "best_val_accuracy": 0.99, "test_accuracy": accuracy, "train_time_s": 9.0,
            "utilisation": 0.5, "run_id": f"{precision}{seed}".ljust(32, "0"),
        }  # fmt: skip

    runs = [
        run("fp32", 0, 0.990, 60.0), run("bf16", 0, 0.991, 30.0),
        run("fp32", 1, 0.992, 62.0), run("bf16", 1, 0.989, None),
        run("fp32", 2, 0.991, 61.0), run("bf16", 2, 0.990, 31.0),
    ]  # fmt: skip
    fp32, bf16 = tta.summarize(runs)
    assert fp32["n"] == 3 and fp32["reached"] == "3 of 3"
    assert fp32["time_to_target_s"] == pytest.approx(61.0) and fp32["of_t4"] == pytest.approx(0.61)
    assert fp32["interval_s"].startswith("[58.") and fp32["bf16_vs_fp32"] == ""
    assert bf16["reached"] == "2 of 3" and math.isnan(bf16["time_to_target_s"])
    assert bf16["test_accuracy"].startswith("99.00 [")
    assert bf16["bf16_vs_fp32"].startswith("-0.10 [") and bf16["bf16_vs_fp32"].endswith(": tie")


def test_a_preset_with_amp_off_races_in_fp32_only(monkeypatch):
    import torch

    from mnist_lab.measure import time_to_accuracy as tta

    cpu = torch.device("cpu")
    monkeypatch.setattr("mnist_lab.engine.device.cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert tta.precisions("alexnet", cpu, None) == ["fp32", "bf16"]
    assert tta.precisions("faster_rcnn", cpu, None) == ["fp32"]  # amp: false in its config
    monkeypatch.setattr("mnist_lab.engine.device.cpu_flags", lambda: frozenset({"avx2"}))
    assert tta.precisions("alexnet", cpu, None) == ["fp32"]
    assert tta.precisions("alexnet", cpu, ["fp32"]) == ["fp32"]


def test_the_peer_trains_on_the_whole_train_split_not_cnn_fasts_subset(mnist_dir):
    """The peer's recipe is one full epoch: cnn_fast's `max_train_samples` must not shrink it,
    and both are tested on the same test split."""
    import torch

    from mnist_lab.config import load_config
    from mnist_lab.measure import time_to_accuracy as tta
    from mnist_lab.train import load_splits

    fast = load_config(None, {**tta.COMMON, "device": "cpu"}, "experiments/cnn_fast.yaml")
    assert fast.max_train_samples is not None  # the preset trains on a subset
    peer = tta.peer_splits(fast)
    ours = load_splits(fast)
    assert len(peer.train_y) == 60_000 - fast.val_size > len(ours.train_y) == fast.max_train_samples
    assert torch.equal(peer.test_y, ours.test_y)


def test_the_bf16_peer_runs_only_where_amp_means_bf16(monkeypatch):
    """On an fp32-only CPU the bf16 variant would be the channels-last one again."""
    import torch

    from mnist_lab.measure import time_to_accuracy as tta

    monkeypatch.setattr("mnist_lab.engine.device.cpu_flags", lambda: frozenset({"avx2"}))
    assert tta.peer_variants(torch.device("cpu")) == ["peer", "peer_channels_last"]
    monkeypatch.setattr("mnist_lab.engine.device.cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert tta.peer_variants(torch.device("cpu")) == ["peer", "peer_channels_last", "peer_bf16"]


def test_the_amp_peer_computes_in_bf16_and_the_published_one_in_fp32(mnist_dir, monkeypatch):
    """`amp=True` puts the peer's convolutions under bf16 autocast, as mnist-lab's runs are;
    as published they stay fp32."""
    import torch

    from mnist_lab.config import TrainConfig
    from mnist_lab.measure import reference_recipe as peer
    from mnist_lab.train import load_splits

    monkeypatch.setattr("mnist_lab.engine.device.cpu_flags", lambda: frozenset({"amx_bf16"}))
    splits = load_splits(
        TrainConfig(max_train_samples=512, max_test_samples=100, val_size=100, device="cpu")
    )
    dtypes: list[torch.dtype] = []
    original = peer.peer_net

    def watched_net() -> torch.nn.Sequential:
        net = original()
        net[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
        return net

    monkeypatch.setattr(peer, "peer_net", watched_net)
    for amp, expected in ((False, torch.float32), (True, torch.bfloat16)):
        dtypes.clear()
        result = peer.train_peer(splits, channels_last=True, amp=amp)
        assert set(dtypes) == {expected} and 0.0 <= result.test_accuracy <= 1.0


def test_the_peer_net_is_the_recipes_two_convs_and_800_256_10_head():
    import torch

    from mnist_lab.measure.reference_recipe import peer_net

    net = peer_net()
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(800, 256), (256, 10)]


def test_the_profile_lists_a_training_steps_operators_by_self_time(mnist_dir, capsys):
    from mnist_lab.measure import profile

    argv = ["--config", "experiments/cnn_fast.yaml", "--steps", "2", "--warmup", "1"]
    assert profile.main([*argv, "--rows", "5", "--batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "cnn (experiments/cnn_fast.yaml), batch 32" in printed
    assert "ms a step, " in printed and "TFLOP/s achieved" in printed
    # fp32 lists aten::convolution_backward, bf16 autocast aten::mkldnn_convolution
    assert "convolution" in printed and "Self CPU %" in printed


def test_compare_precision_times_each_models_step_in_fp32_and_bf16(mnist_dir, capsys):
    """Both precisions whatever the rule says here: the table is what the rule is decided from."""
    from mnist_lab.measure import profile

    argv = ["--model", "cnn", "vit", "--compare-precision", "--steps", "1", "--warmup", "0"]
    assert profile.main([*argv, "--repeats", "1", "--batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "| model (config) | batch | fp32 step | bf16 autocast step | bf16 / fp32 |" in printed
    rows = [line for line in printed.splitlines() if line.startswith(("| cnn ", "| vit "))]
    assert [row.split(" | ")[1] for row in rows] == ["8", "8"]
    assert "the rule's precision where amp is on: " in printed and "hardware: " in printed


@pytest.mark.parametrize(
    ("argv", "message", "status"),
    [
        (["--model", "cnn", "--steps", "100000"], "need 100003: ask for fewer steps", 1),
        (["--model", "cnn", "--trace", "/no/such/dir/t.json"], "its folder does not exist", 2),
        (["--steps", "3"], "give --config FILE or --model NAME", 2),
        (["--model", "cnn", "vit"], "several with --compare-precision", 2),
        (["--model", "cnn", "--compare-precision", "--repeats", "0"], "must be >= 1", 2),
    ],
)
def test_a_bad_profile_request_is_a_clear_error(mnist_dir, capsys, argv, message, status):
    from mnist_lab.measure import profile

    with pytest.raises(SystemExit) as exit_info:
        profile.main(argv)
    assert exit_info.value.code == status  # 1 a lab error, 2 a command line argparse refuses
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("script", sorted(MEASURE_SCRIPTS))
def test_every_measure_script_imports(script):
    """`make measure ARGS=<script>` imports its module only when asked: a broken import would
    go unseen until a user runs it."""
    importlib.import_module(f"mnist_lab.measure.{MEASURE_SCRIPTS[script]}")
