"""docs/extending.md's "Adding a corruption", walked through: the page's own code registers a
toy corruption with `register_corruption` (here, in the test, not in the package); it is then
checked, applied, and appears in a robustness evaluation of the whole suite with its own metric
names, beside MNIST-C's mean.

Tensors only: no MNIST, no MLflow, no model."""

import re
from pathlib import Path

import pytest
import torch

from mnist_lab import names
from mnist_lab.analysis import corruptions
from mnist_lab.analysis.corruptions import (
    CORRUPTIONS,
    DEFAULT_SEVERITY,
    SEVERITIES,
    check_corruptions,
    corrupt,
    corruption_names,
    register_corruption,
)
from mnist_lab.analysis.robustness import corruptions_figure, evaluate_robustness
from mnist_lab.errors import ConfigError

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def the_guides_code() -> str:
    """The Python block of the guide's section "Adding a corruption"."""
    section = GUIDE.read_text(encoding="utf-8").split("\n## Adding a corruption\n")[1]
    section = re.split(r"\n## ", section)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def centre_is_bright(x: torch.Tensor) -> torch.Tensor:
    """A 'model': digit 1 when the centre of the image is bright, else 0: scores [B, 10]."""
    scores = torch.zeros(len(x), 10)
    scores[:, 1] = x[:, 0, 10:18, 10:18].mean(dim=(1, 2))
    scores[:, 0] = 0.5
    return scores


@pytest.fixture
def suite(monkeypatch):
    """The suite as shipped, restored after the test."""
    monkeypatch.setattr(corruptions, "SUITE", dict(corruptions.SUITE))


def test_a_registered_corruption_joins_every_robustness_report(suite) -> None:
    exec(the_guides_code(), {})  # defines invert and registers it
    assert corruption_names()[-1] == "invert" and check_corruptions(["invert"]) == ("invert",)
    images = torch.zeros(40, 1, 28, 28)
    images[:20, :, 8:20, 8:20] = 1.0  # first half: a bright centre → label 1
    labels = torch.tensor([1] * 20 + [0] * 20)
    assert torch.equal(corrupt(images, "invert", severity=5), 1.0 - images)

    result = evaluate_robustness(
        centre_is_bright, images, labels, corruptions=corruption_names(), severities=SEVERITIES
    )
    metrics = result.metrics(DEFAULT_SEVERITY) | result.graded_metrics()
    assert metrics[names.robust_accuracy("invert")] < 1.0
    assert metrics[f"{names.robust_accuracy('invert')}_severity_5"] == 0.0
    mnist_c = [result.accuracy[c][DEFAULT_SEVERITY] for c in CORRUPTIONS]
    assert metrics[names.ROBUST_ACCURACY_MEAN] == pytest.approx(sum(mnist_c) / len(mnist_c))
    assert "invert" in result.to_report()["accuracy"]
    figure = corruptions_figure(images[0], severities=(DEFAULT_SEVERITY,))
    (mosaic,) = figure.axes
    assert "invert" in [label.get_text() for label in mosaic.get_xticklabels()]


@pytest.mark.parametrize(
    ("name", "levels", "message"),
    [
        ("fog", (1, 2, 3, 4, 5), "new snake_case name"),
        ("mean", (1, 2, 3, 4, 5), "new snake_case name"),
        ("two words", (1, 2, 3, 4, 5), "new snake_case name"),
        ("invert", (0.5,), "one parameter set per severity"),
    ],
)
def test_a_bad_registration_says_what_to_change(suite, name, levels, message) -> None:
    with pytest.raises(ConfigError, match=message):
        register_corruption(name, lambda images, level, generator: images, levels)
