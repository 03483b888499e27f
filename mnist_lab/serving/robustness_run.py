"""`robustness`: any logged or registered model on the MNIST-C corruptions, as a new run.

The run is tagged `kind=robustness` and `source_run_id`, and carries the metric names a `train`
run logs (`robust_accuracy_<corruption>`, `robust_accuracy_mean`, `robust_error_ratio`,
`robustness_eval_s`) with the same plots and report, so the two line up in MLflow. The model is
loaded through its pyfunc, so the detector is evaluated through its classifier wrapper too.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass

from mnist_lab import names, tracking
from mnist_lab.analysis.corruptions import (
    DEFAULT_SEVERITY,
    SEVERITIES,
    check_severities,
    corruption_names,
)
from mnist_lab.analysis.robustness import (
    RobustnessResult,
    corruptions_figure,
    evaluate_robustness,
    model_predict,
    robustness_figure,
)
from mnist_lab.data.mnist import load_mnist
from mnist_lab.engine.device import resolve_device
from mnist_lab.errors import ConfigError, LabError
from mnist_lab.serving.robustness_options import RobustnessOptions

log = logging.getLogger(__name__)


@dataclass
class RobustnessRun:
    run_id: str
    source_run_id: str | None
    headline_severity: int
    result: RobustnessResult


def parse_severities(text: str) -> tuple[int, ...]:
    """'3', '1,3,5' or '1..5' → the severities, each checked."""
    text = text.strip()
    if match := re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", text):
        low, high = int(match[1]), int(match[2])
        levels = list(range(low, high + 1)) if low <= high else []
    else:
        try:
            levels = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            levels = []
    if not levels:
        raise ConfigError(
            f"severities={text!r}: give one level, a comma list or a range such as 1..5 "
            f"(levels {SEVERITIES[0]}..{SEVERITIES[-1]})"
        )
    return check_severities(levels)


def robustness(options: RobustnessOptions) -> RobustnessRun:
    """Evaluate the model of `options.run_id` (its `model` artifact) or at `model_uri` on the
    first `samples` MNIST test digits under every corruption (MNIST-C's and the large shifts) at
    each severity.

    The metrics are those of the default severity (3, MNIST-C's own), or of the highest one
    asked for when 3 is not among them. With several severities, `robust_accuracy_mean_severity_<k>`
    gives the graded curve (and `robust_accuracy_shift_severity_<k>`, `..._border_cut_...`); the
    per-corruption values of every severity are in the report and the
    plot.
    """
    run_id, model_uri, samples, seed = (
        options.run_id,
        options.model_uri,
        options.samples,
        options.seed,
    )
    if (run_id is None) == (model_uri is None):
        raise ConfigError("give exactly one of --run-id RUN_ID or --model-uri URI")
    if samples < 1:
        raise ConfigError(f"samples={samples} must be >= 1 (test digits per corruption)")
    levels = parse_severities(options.severities)
    headline = DEFAULT_SEVERITY if DEFAULT_SEVERITY in levels else max(levels)
    uri = model_uri or tracking.run_model_uri(run_id)
    source_run_id = run_id or tracking.source_run_id(uri)
    pyfunc = tracking.load_model(uri)
    torch_device = resolve_device(options.device)
    model = pyfunc.get_raw_model().to(torch_device)
    mnist = load_mnist(options.data_dir)
    if samples > len(mnist.test_labels):
        raise ConfigError(f"samples={samples} must be <= {len(mnist.test_labels)}, the test set")
    images = mnist.test_images[:samples].to(torch_device).unsqueeze(1).float().div(255)
    labels = mnist.test_labels[:samples].to(torch_device).long()

    tags = {names.TAG_KIND: "robustness", names.TAG_DEVICE: torch_device.type}
    if source_run_id:
        tags[names.TAG_SOURCE_RUN_ID] = source_run_id
        # The model may name a run of another store (a copied path, a deleted run).
        with contextlib.suppress(LabError):
            tags[names.TAG_MODEL] = tracking.get_run(source_run_id).tags.get(names.TAG_MODEL, "")
    with tracking.run(run_name=f"robustness-{tags.get(names.TAG_MODEL) or 'model'}", tags=tags):
        tracking.set_tags({"source_model_uri": uri})
        tracking.log_params(
            {"samples": samples, "severities": options.severities, "seed": seed}
            | ({"run_id": run_id} if run_id else {"model_uri": model_uri})
        )
        result = evaluate_robustness(
            model_predict(model),
            images,
            labels,
            corruptions=corruption_names(),
            severities=levels,
            seed=seed,
        )
        tracking.log_metrics(
            {
                **result.metrics(headline),
                names.ROBUSTNESS_EVAL_S: result.seconds,
                **result.graded_metrics(),
            }
        )
        tracking.log_figure(corruptions_figure(images[0], levels), names.PLOT_CORRUPTIONS)
        tracking.log_figure(robustness_figure(result), names.PLOT_ROBUSTNESS)
        tracking.log_dict({**result.to_report(), "model_uri": uri}, names.REPORT_ROBUSTNESS)
        run = tracking.active_run_id()
    log.info(
        "robust_accuracy_mean %.4f (severity %d) over %d digits; run %s",
        result.mean_accuracy(headline),
        headline,
        samples,
        run,
    )
    return RobustnessRun(run, source_run_id, headline, result)
