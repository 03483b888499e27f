"""Names every run shares: metric keys, artifact paths and tags.

The MLflow compare view, `compare`, `register` and the tuner all read runs by these names, so
they live here and nowhere else; so does what each of them knows about a metric (METRICS).
"""

from dataclasses import dataclass, fields

NUM_CLASSES = 10
IMAGE_SIZE = 28

# Per-epoch metrics (step = epoch, counted from 1).
TRAIN_LOSS = "train_loss"
TRAIN_ACCURACY = "train_accuracy"
VAL_LOSS = "val_loss"
VAL_ACCURACY = "val_accuracy"
LR = "lr"
EPOCH_TIME_S = "epoch_time_s"
EPOCH_METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, VAL_LOSS, VAL_ACCURACY, LR, EPOCH_TIME_S)

# Final metrics, logged once.
TEST_ACCURACY = "test_accuracy"
TEST_F1_MACRO = "test_f1_macro"
TEST_LOSS = "test_loss"
TRAIN_TIME_S = "train_time_s"
NUM_PARAMS = "num_params"
INFERENCE_MS_PER_IMAGE = "inference_ms_per_image"
INFERENCE_MS_PER_IMAGE_SLOWEST = "inference_ms_per_image_slowest"  # the slowest timed pass
VAL_DIGITS = "val_digits"  # a trial's validation digits: its accuracy's interval
THROUGHPUT_IMG_PER_S = "throughput_img_per_s"
PEAK_MEMORY_MB = "peak_memory_mb"
# Dense FLOPs of one training step (forward + backward) per image (per scene for the detector),
# counted once by torch.utils.flop_counter, and what the training steps achieved: that times
# the images trained on, over the wall time of the training steps (validation not included).
TRAIN_FLOPS_PER_IMAGE = "train_flops_per_image"
TRAIN_TFLOPS_PER_S = "train_tflops_per_s"
# Runs with a target_val_accuracy that reached it: training wall time until the validation
# check that did (validation included, as MLPerf counts it) and epochs trained by then.
TIME_TO_TARGET_S = "time_to_target_s"
EPOCHS_TO_TARGET = "epochs_to_target"
BEST_VAL_ACCURACY = "best_val_accuracy"
BEST_EPOCH = "best_epoch"
TRACKING_OVERHEAD = "tracking_overhead_fraction"
# Wall time of the end-of-run report after the test pass: calibration, corruptions and
# explanations for a classifier, mAP and detections for the detector, and every run's figures
# (built; logging them is not counted). What "how it fails" costs a run.
TEST_REPORT_S = "test_report_s"
# Detector only (faster_rcnn): classification through detection finds no box; COCO mAP@.5 and
# mAP@[.5:.95] on multi-digit test scenes.
TEST_NO_DETECTION_RATE = "test_no_detection_rate"
TEST_MAP_50 = "test_map_50"
TEST_MAP = "test_map"

# MNIST-C's own severity of its corruptions (1-5): the one every run's robust_accuracy_* uses.
DEFAULT_SEVERITY = 3

# How a classifier fails (every classifier run, and `robustness` runs): accuracy under the
# MNIST-C corruptions of the test split, and calibration of its probabilities.
ROBUST_ACCURACY_PREFIX = "robust_accuracy_"  # + corruption name, e.g. robust_accuracy_fog
ROBUST_ACCURACY_MEAN = "robust_accuracy_mean"
ROBUST_ERROR_RATIO = "robust_error_ratio"  # mean corrupted error / clean error
ROBUSTNESS_EVAL_S = "robustness_eval_s"
# Digits moved 8 px in a random direction (the `shift` corruption at severity 5), read after
# cleaning: how well a model reads a digit anywhere in the frame.
ROBUST_ACCURACY_SHIFT_8PX = "robust_accuracy_shift_severity_5"
# Digits from other sources (fonts, handwriting at each scan resolution), read as `predict`
# reads photos: + source name, e.g. source_accuracy_handwriting_8px.
SOURCE_ACCURACY_PREFIX = "source_accuracy_"
SOURCES_EVAL_S = "sources_eval_s"
TEST_ECE = "test_ece"  # top-label expected calibration error, 15 equal-width bins
TEST_ECE_CALIBRATED = "test_ece_calibrated"  # after temperature scaling fitted on validation
TEST_BRIER = "test_brier"
TEMPERATURE = "temperature"  # what the logged model divides its logits by

# Honest numbers (analysis/statistics.py). Every run: the 95 % interval of its test accuracy
# (Wilson, over its test digits). A `train --seeds N` parent run: over its N seed runs, each
# metric METRICS marks `repeated` as <metric>_mean, _std, _ci95_low and _ci95_high (test
# accuracy's interval counts the seeds and the digits; the others' the seeds), and n_seeds.
TEST_ACCURACY_CI95_LOW = "test_accuracy_ci95_low"
TEST_ACCURACY_CI95_HIGH = "test_accuracy_ci95_high"
N_SEEDS = "n_seeds"
AGGREGATES = ("mean", "std", "ci95_low", "ci95_high")


def aggregate(metric: str, statistic: str) -> str:
    """`test_accuracy` + `mean` → `test_accuracy_mean`: a repeats run's figure over its seeds."""
    return f"{metric}_{statistic}"


def predictions_artifact(split: str) -> str:
    """`predictions/test.parquet`: a split's per-digit predictions (analysis/predictions.py)."""
    return f"predictions/{split}.parquet"


def robust_accuracy(corruption: str) -> str:
    return ROBUST_ACCURACY_PREFIX + corruption


def source_accuracy(source: str) -> str:
    return SOURCE_ACCURACY_PREFIX + source


# Artifacts.
PLOT_CONFUSION_MATRIX = "plots/confusion_matrix.png"
PLOT_LEARNING_CURVES = "plots/learning_curves.png"
PLOT_SAMPLE_PREDICTIONS = "plots/sample_predictions.png"
REPORT_CLASSIFICATION = "reports/classification_report.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_LAST = "checkpoints/last.pt"
MODEL_ARTIFACT = "model"
PLOT_CORRUPTIONS = "plots/corruptions.png"  # one test digit under every corruption
PLOT_ROBUSTNESS = "plots/robustness.png"  # accuracy per corruption
PLOT_RELIABILITY = "plots/reliability_diagram.png"
PLOT_EXPLANATIONS = "plots/explanations.png"  # Grad-CAM / attention rollout heat maps
REPORT_ROBUSTNESS = "reports/robustness.json"
PLOT_SOURCES = "plots/sources.png"  # per source: digits as given, as the model saw them, read
REPORT_SOURCES = "reports/sources.json"  # per source: accuracy, Wilson interval, n
REPORT_CALIBRATION = "reports/calibration.json"
PLOT_DETECTIONS = "plots/detections.png"  # faster_rcnn: predicted vs true boxes on test scenes
DETECTOR_ARTIFACT = "detector"  # faster_rcnn: the raw torchvision detector (get_raw_model())

# Tags.
TAG_MODEL = "model"
TAG_CONFIG = "config"  # the run config's file name: cnn.yaml, cnn_fast.yaml, ...
# A distributed (torchrun) job's shape: processes in all, c10d backend, machines.
TAG_WORLD_SIZE = "world_size"
TAG_BACKEND = "backend"
TAG_NNODES = "nnodes"
TAG_ELASTIC_JOB = "torchelastic_run_id"  # the torchrun job: a restarted job resumes this run
TAG_KIND = "kind"
TAG_DEVICE = "device"
# What a run's figures ran on: the CPU's model, units (AVX2, AVX-512, "AVX-512, avx512_bf16",
# AMX) and cores, or the GPU. Timings compare only between runs of one machine.
TAG_MACHINE = "machine"
# The share of the run's CPUs' time other processes used while it trained
# (engine/contention.py): its seconds are the recipe's cost only when this is small.
TAG_OTHER_CPU_SHARE = "other_cpu_share"
# `train --seeds N`: the parent run of the N seed runs (kind "repeats"), named on each of them.
TAG_REPEATS_RUN_ID = "repeats_run_id"
TAG_TORCH_VERSION = "torch_version"
TAG_PRECISION = "precision"  # bf16 (autocast) or fp32: what `amp` meant on this hardware
# The same as a param: the precision separates configurations (compare, register, report).
PARAM_PRECISION = "precision"
TAG_GIT_COMMIT = "git_commit"
TAG_FAILURE_REASON = "failure_reason"
# The process holding a RUNNING run, and its heartbeat (tracking/liveness.py).
TAG_PROCESS_HOST = "process.host"
TAG_PROCESS_MACHINE = "process.machine"  # boot id / pid namespace: where pids compare
TAG_PROCESS_PID = "process.pid"
TAG_PROCESS_STARTED = "process.started"  # clock ticks since boot: tells a reused pid apart
TAG_PROCESS_HEARTBEAT = "process.heartbeat"  # seconds since the epoch
TAG_STUDY_NAME = "study_name"
TAG_SOURCE_RUN_ID = "source_run_id"  # on a `robustness` run: the run whose model it evaluated

# Tuning (`tune`): the parent run of a study invocation and its nested trial runs.
TAG_TRIAL_NUMBER = "trial_number"
TAG_TRIAL_STATE = "trial_state"  # COMPLETE / PRUNED / FAIL
TAG_SAMPLER = "sampler"
TAG_PRUNER = "pruner"
TAG_STORAGE = "storage"  # the Optuna storage URL, credentials removed
TAG_BEST_PARAMS = "best_params"
TAG_TUNE_RUN_ID = "tune_run_id"  # on the retrain: the parent run of its study
TAG_RETRAIN_RUN_ID = "retrain_run_id"  # on the parent: the retrained best configuration
# `tune --confirm-seeds K`: the winner and the defaults retrained at K seeds each; on the parent,
# the tuned minus the defaults' test accuracy, its 95 % interval, the test and the verdict.
CONFIRM_DIFFERENCE = "confirm_test_accuracy_difference"
CONFIRM_CI95_LOW = "confirm_ci95_low"
CONFIRM_CI95_HIGH = "confirm_ci95_high"
CONFIRM_P_VALUE = "confirm_p_value"
TAG_CONFIRM_TEST = "confirm_test"
TAG_CONFIRM_VERDICT = "confirm_verdict"
TAG_DEFAULTS_RUN_ID = "defaults_run_id"  # on the parent: the defaults' repeats run
N_COMPLETE_TRIALS = "n_complete_trials"
N_PRUNED_TRIALS = "n_pruned_trials"
N_FAILED_TRIALS = "n_failed_trials"
TRIALS_PER_MINUTE = "trials_per_minute"
BEST_PARAMS_FILE = "best_params.json"
PLOT_OPTIMIZATION_HISTORY = "plots/optimization_history.png"
PLOT_PARAM_IMPORTANCES = "plots/param_importances.png"
PLOT_PARALLEL_COORDINATE = "plots/parallel_coordinate.png"
PLOT_INTERMEDIATE_VALUES = "plots/intermediate_values.png"
# Objectives beyond validation accuracy (`tune --objectives`), and what a study logs about them.
VAL_ROBUST_ACCURACY = "val_robust_accuracy"  # validation digits under the corruption suite, mean
TAG_OBJECTIVES = "objectives"  # on the parent: "val_accuracy,inference_ms_per_image"
TAG_PICK = "pick"  # on the parent: the rule that chose the trial to retrain
TAG_PICKED_TRIAL = "picked_trial"
TAG_PARETO_TRIALS = "pareto_trials"  # on the parent: the Pareto-optimal trials' numbers
TAG_PARETO_OPTIMAL = "pareto_optimal"  # on a trial's run: true / false
TAG_DEFAULTS_TRIAL = "defaults_trial"  # on the run of trial 0: experiments/<model>.yaml's values
TAG_VS_DEFAULTS = "vs_defaults"  # on the parent: how the winner(s) compare with the defaults
TAG_RETRAIN_RUN_IDS = "retrain_run_ids"  # on the parent: every retrain (the Pareto trials')
TAG_RETRAINED_TRIAL = "retrained_trial"  # on a retrain: the trial whose configuration it trains
PLOT_PARETO_FRONT = "plots/pareto_front.png"
PARETO_TRIALS_FILE = "pareto_trials.json"  # a table: the Pareto-optimal trials and their values


def defaults_metric(objective: str) -> str:
    """Parent metric: the defaults' trial's value of `objective`."""
    return f"defaults_{objective}"


def gain_over_defaults_metric(objective: str) -> str:
    """Parent metric: how much the winner improves `objective` on the defaults (> 0: better,
    in the objective's own direction and unit)."""
    return f"{objective}_gain_over_defaults"


DEFAULT_EXPERIMENT = "mnist-lab"

# The run's model as ONNX (tracking/onnx.py): digits → probabilities, temperature included; for
# faster_rcnn, its detector (one scene → boxes, labels, scores). Checked against torch at logging.
ONNX_ARTIFACT = "onnx"
ONNX_DETECTOR_ARTIFACT = "onnx_detector"
ONNX_MAX_PROB_DIFF = "onnx_max_abs_prob_diff"  # max |onnxruntime - torch| over test digits
ONNX_SIZE_BYTES = "onnx_size_bytes"
TAG_ONNX_ERROR = "onnx.error"  # why a run logged no ONNX model


def model_sha256_tag(artifact: str) -> str:
    """The run tag holding the sha256 of its logged model `artifact`'s weights."""
    return f"{artifact}.weights_sha256"


def model_code_sha256_tag(artifact: str) -> str:
    """The run tag holding the sha256 of the code folder its logged model `artifact` carries."""
    return f"{artifact}.code_sha256"


# The metric table: what every part of the lab knows about a metric, stated once. `compare`,
# `report`, `register`, `tune`, `--pick` / `--where` / `--best-by` and `train --seeds N` read it;
# a metric computed from a run's test predictions adds its function to
# analysis/metrics.py's FROM_PREDICTIONS and is then logged by every run.
MAXIMIZE = "maximize"  # Optuna's direction names
MINIMIZE = "minimize"


@dataclass(frozen=True)
class Metric:
    """One metric: which way is better, how it is named and printed, and who reads it."""

    name: str
    direction: str  # MAXIMIZE or MINIMIZE
    label: str  # for people: axis labels and help, unit included
    fmt: str = "{:.4f}"  # how `compare` and `report` print it
    final: bool = False  # every finished train run logs it, classifier and detector alike
    compare: bool = False  # a column of `compare`'s table: the mean over a row's runs
    report: bool = False  # a column of `report`'s tables (configurations, benchmark)
    repeated: bool = False  # a `train --seeds N` parent logs its mean, std and interval
    # A `tune --objectives`, `--pick` and `--constraint` metric: a trial measures it without
    # the test split (tuning/objectives.py says how).
    objective: bool = False
    # `register --where` may bound it: what a finished train run logs of its cost or of
    # validation, never a test-set score (registration chooses by validation only).
    budget: bool = False
    register: bool = False  # tagged on the model version `register` creates

    def __post_init__(self) -> None:
        if self.direction not in (MAXIMIZE, MINIMIZE):
            raise ValueError(
                f"metric {self.name}: direction {self.direction!r} is not "
                f"{MAXIMIZE!r} or {MINIMIZE!r}"
            )


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        # Per epoch.
        Metric(TRAIN_LOSS, MINIMIZE, "training loss"),
        Metric(TRAIN_ACCURACY, MAXIMIZE, "training accuracy"),
        Metric(VAL_LOSS, MINIMIZE, "validation loss"),
        Metric(VAL_ACCURACY, MAXIMIZE, "validation accuracy", objective=True),
        Metric(EPOCH_TIME_S, MINIMIZE, "epoch time (s)", "{:.1f}"),
        # Once a run, on the test split (the columns in this order).
        Metric(TEST_ACCURACY, MAXIMIZE, "test accuracy", final=True, repeated=True, register=True),
        Metric(TEST_F1_MACRO, MAXIMIZE, "test macro F1", final=True, compare=True, register=True),
        Metric(TEST_LOSS, MINIMIZE, "test loss", final=True, compare=True, register=True),
        Metric(
            ROBUST_ACCURACY_MEAN,
            MAXIMIZE,
            "test accuracy under corruptions (mean)",
            compare=True,
            report=True,
            repeated=True,
        ),
        Metric(
            TEST_ECE,
            MINIMIZE,
            "expected calibration error (test)",
            compare=True,
            report=True,
            repeated=True,
        ),
        Metric(TEST_ECE_CALIBRATED, MINIMIZE, "ECE after temperature scaling", compare=True),
        Metric(
            ROBUST_ACCURACY_SHIFT_8PX,
            MAXIMIZE,
            "test accuracy, digits moved 8 px",
            compare=True,
            repeated=True,
        ),
        Metric(TEST_BRIER, MINIMIZE, "Brier score (test)"),
        Metric(ROBUST_ERROR_RATIO, MINIMIZE, "corrupted error / clean error", "{:.2f}"),
        Metric(TEST_NO_DETECTION_RATE, MINIMIZE, "test digits with no box found"),
        Metric(TEST_MAP_50, MAXIMIZE, "test mAP@.5"),
        Metric(TEST_MAP, MAXIMIZE, "test mAP@[.5:.95]"),
        # The training and its cost.
        Metric(
            TRAIN_TIME_S,
            MINIMIZE,
            "training time (s)",
            "{:.1f}",
            final=True,
            compare=True,
            report=True,
            repeated=True,
            objective=True,
            budget=True,
            register=True,
        ),
        Metric(
            NUM_PARAMS,
            MINIMIZE,
            "parameters",
            "{:,.0f}",
            final=True,
            compare=True,
            objective=True,
            budget=True,
            register=True,
        ),
        Metric(
            INFERENCE_MS_PER_IMAGE,
            MINIMIZE,
            "inference latency (ms per image)",
            "{:.3f}",
            final=True,
            compare=True,
            objective=True,
            budget=True,
        ),
        Metric(
            THROUGHPUT_IMG_PER_S,
            MAXIMIZE,
            "inference throughput (images/s)",
            "{:,.0f}",
            final=True,
            compare=True,
            budget=True,
        ),
        Metric(PEAK_MEMORY_MB, MINIMIZE, "peak memory (MB)", "{:.0f}", final=True, budget=True),
        Metric(
            TRAIN_FLOPS_PER_IMAGE,
            MINIMIZE,
            "training FLOPs per image",
            "{:.3g}",
            objective=True,
            budget=True,
        ),
        Metric(TRAIN_TFLOPS_PER_S, MAXIMIZE, "training TFLOP/s achieved", "{:.3f}"),
        Metric(
            BEST_VAL_ACCURACY,
            MAXIMIZE,
            "best validation accuracy",
            repeated=True,
            budget=True,
            register=True,
        ),
        Metric(TIME_TO_TARGET_S, MINIMIZE, "time to the target accuracy (s)", "{:.1f}"),
        Metric(EPOCHS_TO_TARGET, MINIMIZE, "epochs to the target accuracy", "{:.0f}"),
        Metric(TEST_REPORT_S, MINIMIZE, "end-of-run report time (s)", "{:.1f}", report=True),
        Metric(TRACKING_OVERHEAD, MINIMIZE, "tracking time / training time", "{:.3f}"),
        # Tuning trials only.
        Metric(
            VAL_ROBUST_ACCURACY,
            MAXIMIZE,
            "validation accuracy under corruptions (mean)",
            objective=True,
        ),
    )
}
FLAGS = tuple(f.name for f in fields(Metric) if isinstance(f.default, bool))


def metric_names(flag: str) -> list[str]:
    """The table's metrics with `flag` set ("final", "compare", "budget", ...), in its order.
    Read at each use, so an entry added at run time counts everywhere."""
    if flag not in FLAGS:
        raise ValueError(f"unknown metric flag {flag!r}; one of {', '.join(FLAGS)}")
    return [metric.name for metric in METRICS.values() if getattr(metric, flag)]
