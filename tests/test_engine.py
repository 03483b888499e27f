"""The training loop on synthetic digits: learning, determinism, exact resume, NaN, early stop."""

import os
import signal

import pytest
import torch

from mnist_lab import names
from mnist_lab.config import build_config
from mnist_lab.data.loader import BatchLoader
from mnist_lab.engine import device as engine_device
from mnist_lab.engine import loop as engine_loop
from mnist_lab.engine.classification import ClassificationTask
from mnist_lab.engine.device import amp_dtype, autocast, place_model
from mnist_lab.engine.flops import train_flops_per_sample
from mnist_lab.engine.interrupt import deferred_interrupts
from mnist_lab.engine.loop import (
    NonFiniteLossError,
    TrainState,
    check_steps,
    epochs_without_gain,
    fit,
    make_optimizer,
    make_scheduler,
)
from mnist_lab.models.build import build_model


def synthetic_digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 28, 28] noise with a bright bar whose row encodes the label."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        images[i, 2 + 2 * label : 4 + 2 * label, 4:24] = 255
    return images, labels


def make_state(epochs: int = 2, **overrides) -> tuple[TrainState, BatchLoader, BatchLoader]:
    config = build_config(
        {
            "model": "cnn",
            "epochs": epochs,
            "batch_size": 32,
            "lr": 3e-3,
            "depth": 1,
            "width": 8,
            "val_size": 10,
            **overrides,
        }
    )
    torch.manual_seed(config.seed)
    train_x, train_y = synthetic_digits(256)
    val_x, val_y = synthetic_digits(64, seed=1)
    train = BatchLoader(train_x, train_y, config.batch_size, shuffle=True, seed=config.seed)
    val = BatchLoader(val_x, val_y, 64)
    model = place_model(build_model(config.model, **config.model_options), torch.device("cpu"))
    optimizer = make_optimizer(model, config)
    state = TrainState(config, model, optimizer, make_scheduler(optimizer, config, len(train)))
    return state, train, val


def run_fit(state, train, val, listeners=()):
    return fit(state, ClassificationTask(state.config), train, val, torch.device("cpu"), listeners)


class Recorder:
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, state, metrics):
        self.epochs.append((state.epoch, metrics))


def test_fit_learns_and_reports_every_epoch_metric():
    state, train, val = make_state(epochs=3)
    recorder = Recorder()
    run_fit(state, train, val, [recorder])
    assert [e for e, _ in recorder.epochs] == [1, 2, 3]
    assert set(names.EPOCH_METRICS) <= set(recorder.epochs[-1][1])
    assert recorder.epochs[-1][1][names.VAL_ACCURACY] > 0.9
    assert state.best_model is not None and state.best_epoch >= 1
    assert state.train_seconds > 0


def test_same_seed_same_history():
    histories = []
    for _ in range(2):
        state, train, val = make_state()
        histories.append(
            [
                {k: v for k, v in h.items() if k != names.EPOCH_TIME_S}
                for h in run_fit(state, train, val).history
            ]
        )
    assert histories[0] == histories[1]


class StopAfter:
    """Snapshot the checkpoint state after `epoch`, then simulate Ctrl-C."""

    def __init__(self, epoch):
        self.epoch, self.snapshot = epoch, None

    def on_epoch_end(self, state, metrics):
        if state.epoch == self.epoch:
            self.snapshot = state.state_dict()
            raise KeyboardInterrupt


def test_resume_from_checkpoint_matches_an_uninterrupted_run():
    straight, train, val = make_state(epochs=3)
    run_fit(straight, train, val)

    interrupted, train, val = make_state(epochs=3)
    stopper = StopAfter(1)
    with pytest.raises(KeyboardInterrupt):
        run_fit(interrupted, train, val, [stopper])
    resumed, train, val = make_state(epochs=3)
    resumed.load_state_dict(stopper.snapshot)
    run_fit(resumed, train, val)

    assert resumed.epoch == 3 and len(resumed.history) == 3
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


class Poison:
    def on_epoch_end(self, state, metrics):
        with torch.no_grad():
            for p in state.model.parameters():
                p.fill_(float("nan"))


def test_nan_loss_stops_training_with_a_clear_error():
    state, train, val = make_state(epochs=3)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2.*lr"):
        run_fit(state, train, val, [Poison()])
    assert state.epoch == 1  # the last good epoch; nothing after it was recorded


def test_early_stopping_halts_after_patience():
    state, train, val = make_state(epochs=20, early_stopping_patience=1, lr=1e-9)
    run_fit(state, train, val)
    assert state.epoch < 20
    assert epochs_without_gain(state.history) == 1


class BestEpochRecorder:
    def __init__(self, into: list[int]):
        self.into = into

    def on_epoch_end(self, state, metrics):
        self.into.append(state.best_epoch)


def test_a_validation_tie_goes_to_the_epoch_with_the_lower_loss(monkeypatch):
    scripted = iter([(0.30, 0.95), (0.20, 0.95), (0.25, 0.95), (0.22, 0.95), (0.40, 0.96)])
    monkeypatch.setattr(engine_loop, "validate", lambda *args: next(scripted))  # (loss, acc)
    state, train, val = make_state(epochs=3, scheduler="none")
    kept = []
    run_fit(state, train, val, [BestEpochRecorder(kept)])
    assert kept == [1, 2, 2] and state.best_val_loss == 0.20  # not the first, nor the last
    resumed, _, _ = make_state(epochs=5, scheduler="none")
    resumed.load_state_dict(state.state_dict())
    assert resumed.best_val_loss == 0.20  # the checkpoint keeps it
    kept = []
    scripted = iter([(0.22, 0.95), (0.40, 0.96)])
    run_fit(resumed, train, val, [BestEpochRecorder(kept)])
    assert kept == [2, 5]  # epoch 4's 0.22 loses to epoch 2's; then accuracy comes first


def test_the_kept_weights_are_the_tie_winners(monkeypatch):
    scripted = iter([(0.30, 0.95), (0.20, 0.95), (0.25, 0.95)])
    monkeypatch.setattr(engine_loop, "validate", lambda *args: next(scripted))
    state, train, val = make_state(epochs=3, scheduler="none")
    weights = []

    class Snapshot:
        def on_epoch_end(self, state, metrics):
            weights.append({k: v.clone() for k, v in state.model.state_dict().items()})

    run_fit(state, train, val, [Snapshot()])
    for key, value in state.best_model.items():
        assert torch.equal(value, weights[1][key]), key  # epoch 2's, not 1's or 3's
    moved = [k for k, v in weights[1].items() if v.is_floating_point()]
    assert any(not torch.equal(weights[1][k], weights[2][k]) for k in moved)  # epochs differ


def test_early_stopping_counts_accuracy_gains_not_loss_ties(monkeypatch):
    losses = iter([0.5, 0.4, 0.3, 0.2, 0.1, 0.05])  # accuracy flat, the loss falls every epoch
    monkeypatch.setattr(engine_loop, "validate", lambda *args: (next(losses), 0.9))
    state, train, val = make_state(epochs=6, scheduler="none", early_stopping_patience=2)
    run_fit(state, train, val)
    assert state.epoch == 3 and state.best_epoch == 3  # stopped, keeping the lowest-loss epoch
    assert epochs_without_gain([{"val_accuracy": a} for a in (0.9, 0.95, 0.95, 0.94)]) == 2
    assert epochs_without_gain([]) == 0


def test_check_steps_spread_mid_epoch_validations_evenly():
    assert check_steps(100, 4) == {25, 50, 75}
    assert check_steps(100, 1) == set()
    assert check_steps(3, 8) == {1, 2}  # more checks than steps: one after each step but the last
    assert check_steps(10, 4) == {3, 5, 8}  # 2.5 and 7.5 round up alike, not to the even one


def test_training_stops_at_the_mid_epoch_check_that_reaches_the_target():
    state, train, val = make_state(epochs=5, target_val_accuracy=0.9, val_checks_per_epoch=4)
    recorder = Recorder()
    run_fit(state, train, val, [recorder])
    assert state.epoch < 5 and state.epochs_to_target is not None
    assert state.epochs_to_target < state.epoch  # a fraction of the last epoch: a mid-epoch check
    assert recorder.epochs[-1][1][names.VAL_ACCURACY] >= 0.9  # the reaching check's figures
    assert state.best_val_accuracy >= 0.9 and state.best_epoch == state.epoch
    assert 0 < state.time_to_target_s <= state.train_seconds
    assert state.samples_trained < state.epoch * 256  # the last epoch was cut short


def test_without_stop_at_target_the_time_to_it_is_noted_and_the_schedule_runs_to_its_end():
    """The same seed and data as a stopping run: the same first check reaches the target at
    the same point, and training then goes on through every epoch, validating only at their
    ends (the mid-epoch checks serve the target)."""
    stopped, train, val = make_state(epochs=5, target_val_accuracy=0.9, val_checks_per_epoch=4)
    run_fit(stopped, train, val)
    state, train, val = make_state(
        epochs=5, target_val_accuracy=0.9, val_checks_per_epoch=4, stop_at_target=False
    )
    recorder = Recorder()
    run_fit(state, train, val, [recorder])
    assert state.epoch == 5 and len(recorder.epochs) == 5
    assert state.epochs_to_target == stopped.epochs_to_target < stopped.epoch
    assert 0 < state.time_to_target_s < state.train_seconds
    assert state.samples_trained == 5 * 256  # no epoch cut short


def test_a_run_resumed_after_reaching_its_target_trains_no_further():
    state, train, val = make_state(epochs=5, target_val_accuracy=0.9, val_checks_per_epoch=4)
    run_fit(state, train, val)
    snapshot = state.state_dict()
    resumed, train, val = make_state(epochs=5, target_val_accuracy=0.9, val_checks_per_epoch=4)
    resumed.load_state_dict(snapshot)
    run_fit(resumed, train, val)
    assert resumed.epoch == state.epoch < 5
    assert resumed.time_to_target_s == state.time_to_target_s


def test_a_target_never_reached_trains_every_epoch_and_records_no_time():
    state, train, val = make_state(epochs=2, target_val_accuracy=1.0, lr=1e-9)
    run_fit(state, train, val)
    assert state.epoch == 2 and state.time_to_target_s is None and state.epochs_to_target is None


@pytest.mark.parametrize(
    ("mode", "graphed"),
    [
        ("default", False),
        ("reduce-overhead", True),
        ("max-autotune", True),
        ("max-autotune-no-cudagraphs", False),
    ],
)
def test_compile_uses_its_mode_and_marks_each_step_before_its_forward(monkeypatch, mode, graphed):
    events, modes = [], []

    def fake_compile(module, mode):
        modes.append(mode)

        def forward(*args):
            events.append("forward")
            return module(*args)

        return forward

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: events.append("mark"))
    state, train, val = make_state(epochs=2, compile=True, compile_mode=mode)
    run_fit(state, train, val)
    assert modes == [mode]
    step = ["mark", "forward"] if graphed else ["forward"]
    assert events == step * 16  # 2 epochs x 8 steps (256 / 32): validation is not compiled
    assert state.history[-1][names.VAL_ACCURACY] > 0.5


@pytest.mark.parametrize(
    ("optimizer", "scheduler"), [("sgd", "cosine"), ("adamw", "none"), ("sgd", "onecycle")]
)
def test_every_optimizer_and_schedule_trains(optimizer, scheduler):
    state, train, val = make_state(epochs=2, optimizer=optimizer, scheduler=scheduler, lr=0.05)
    run_fit(state, train, val)
    assert state.history[-1][names.TRAIN_LOSS] < state.history[0][names.TRAIN_LOSS] + 1e-6
    lrs = [group["lr"] for group in state.optimizer.param_groups]
    assert (lrs[0] == 0.05) == (scheduler == "none")


def test_weight_decay_skips_biases_and_norms():
    state, _, _ = make_state()
    decayed, plain = state.optimizer.param_groups
    assert all(p.ndim >= 2 for p in decayed["params"]) and decayed["weight_decay"] > 0
    assert all(p.ndim < 2 for p in plain["params"]) and plain["weight_decay"] == 0


AMD_ZEN4 = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}
XEON_SPR = AMD_ZEN4 | {"amx_tile", "amx_bf16", "amx_int8"}
AMD, INTEL = "AuthenticAMD", "GenuineIntel"


@pytest.mark.parametrize(
    ("flags", "vendor", "units", "dtype"),
    [
        (XEON_SPR, INTEL, "AMX", torch.bfloat16),
        (AMD_ZEN4, AMD, "AVX-512, avx512_bf16", torch.bfloat16),
        (AMD_ZEN4, INTEL, "AVX-512, avx512_bf16", None),  # a Xeon without AMX: bf16 is slower
        ({"avx2", "avx512f"}, AMD, "AVX-512", None),
        ({"sse4_2", "avx", "avx2", "fma"}, INTEL, "AVX2", None),
        ({"fp", "asimd", "bf16", "sve"}, "", None, None),  # ARM: bf16 not measured, fp32
        (set(), "", None, None),  # no /proc/cpuinfo
    ],
)
def test_the_cpu_precision_rule_reads_the_cpus_flags_and_vendor(
    monkeypatch, flags, vendor, units, dtype
):
    rule = engine_device.cpu_precision(frozenset(flags), vendor)
    assert rule.dtype == dtype and rule.why
    assert units is None or rule.units == units
    monkeypatch.setattr(engine_device, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(engine_device, "cpu_vendor", lambda: vendor)
    cpu = torch.device("cpu")
    assert amp_dtype(cpu, enabled=True) == dtype
    assert engine_device.precision(cpu, enabled=True) == ("bf16" if dtype else "fp32")
    assert amp_dtype(cpu, enabled=False) is None  # --amp false forces fp32
    assert engine_device.precision(cpu, enabled=False) == "fp32"
    assert amp_dtype(torch.device("cuda"), enabled=True) == torch.bfloat16
    assert f", {rule.units}, " in engine_device.machine_name(cpu)


def test_this_cpus_flags_are_read_without_torch_internals():
    flags, vendor = engine_device.cpu_flags(), engine_device.cpu_vendor()
    assert isinstance(flags, frozenset) and isinstance(vendor, str)
    assert engine_device.cpu_precision(flags, vendor).units in engine_device.machine_name(
        torch.device("cpu")
    )


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_autocast_only_where_the_hardware_computes_in_bf16(monkeypatch, bf16):
    monkeypatch.setattr(
        engine_device, "cpu_flags", lambda: frozenset(XEON_SPR if bf16 else {"avx2"})
    )
    cpu = torch.device("cpu")
    model = torch.nn.Linear(4, 2)
    with autocast(cpu, enabled=True):
        out = model(torch.ones(1, 4))
    assert out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    with autocast(cpu, enabled=False):
        assert model(torch.ones(1, 4)).dtype == torch.float32


def test_place_model_keeps_the_function_and_stores_conv_weights_channels_last():
    model = build_model("cnn", depth=2, width=8).eval()
    x = torch.rand(3, 1, 28, 28)
    expected = model(x)
    placed = place_model(model, torch.device("cpu"))
    conv = placed.features[1][0].weight  # [16, 8, 3, 3]; the first conv has one input channel
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.testing.assert_close(placed(x), expected)


class CtrlC:
    """Sends this process SIGINT from inside a listener, as a user's Ctrl-C mid-epoch would."""

    def __init__(self):
        self.finished_listener = False

    def on_epoch_end(self, state, metrics):
        os.kill(os.getpid(), signal.SIGINT)
        self.finished_listener = True  # the signal did not cut the listener short


def test_ctrl_c_while_training_stops_at_the_next_step_boundary():
    state, train, val = make_state(epochs=3)
    ctrl_c, after = CtrlC(), Recorder()
    with pytest.raises(KeyboardInterrupt, match="SIGINT during training"):
        run_fit(state, train, val, [ctrl_c, after])
    assert ctrl_c.finished_listener and len(after.epochs) == 1  # every listener saw epoch 1
    assert state.epoch == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_the_same_signal_again_interrupts_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        reached.append(stop.signal)  # deferred: still running here
        os.kill(os.getpid(), signal.SIGINT)
        reached.append("after the second")
    assert reached == [signal.SIGINT]


def test_sigterm_after_sigint_does_not_escalate():
    """`mlflow run` sends its child SIGTERM right after the terminal's SIGINT."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        reached = []
        with pytest.raises(KeyboardInterrupt), deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            reached.append("both deferred")
        assert reached == ["both deferred"]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_pending_ctrl_c_wins_over_another_exception():
    """A pruned trial's TrialPruned must not swallow the user's Ctrl-C."""
    with pytest.raises(KeyboardInterrupt) as caught, deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        raise ValueError("pruned")
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_ctrl_c_after_training_is_raised_when_the_outermost_block_ends():
    reached = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupts() as outer:
        with deferred_interrupts() as inner:  # fit() inside train(): one shared request
            assert inner is outer
            os.kill(os.getpid(), signal.SIGINT)
        reached.append(outer.signal)  # the inner block's end did not raise
    assert reached == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_train_flops_of_a_tiny_model_are_counted_exactly_and_leave_it_untouched():
    """conv 1→4 (3×3, 26×26 out), BatchNorm, linear 2704→10. Per image, forward: conv
    2·(4·26·26)·9 = 48 672, linear 2·2704·10 = 54 080; backward: both weight gradients again,
    and the linear's input gradient (the conv's input needs none) 54 080."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 26 * 26, 10),
    )
    task = ClassificationTask(build_config({"model": "cnn"}))
    batch = (torch.rand(6, 1, 28, 28), torch.arange(6))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert train_flops_per_sample(task, model, batch) == 2 * 48_672 + 3 * 54_080
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
