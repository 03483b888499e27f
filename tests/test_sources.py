"""Digits from other sources: the seeded handwriting generator, each source's accuracy with its
Wilson interval, and the figure of digits as given, as seen and as read."""

import numpy as np
import pytest
import torch

from mnist_lab.analysis.sources import evaluate_sources, source_sets, sources_figure
from mnist_lab.analysis.statistics import wilson_interval
from mnist_lab.data.handwriting import SOURCES, handwriting_set
from mnist_lab.data.images import mnist_style


def test_handwriting_is_seeded_and_labelled():
    photos, labels = handwriting_set("handwriting_12px", 2, seed=3)
    again, _ = handwriting_set("handwriting_12px", 2, seed=3)
    other, _ = handwriting_set("handwriting_12px", 2, seed=4)
    assert list(labels) == [d for d in range(10) for _ in range(2)]
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(photos, again, strict=True)
    )
    assert not all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(photos, other, strict=True)
    )
    assert all(p.mode == "RGB" for p in photos)
    with pytest.raises(ValueError, match="handwriting_8px"):
        handwriting_set("handwriting_3px", 1)


@pytest.mark.parametrize("source", list(SOURCES))
def test_each_source_is_dark_ink_on_light_paper_that_predict_makes_a_digit_of(source):
    photos, _ = handwriting_set(source, 1, seed=0)
    for photo in photos:
        grey = np.asarray(photo.convert("L"), dtype=np.float32)
        assert np.median(grey) > 150 and grey.min() < np.median(grey) - 60
        digit = mnist_style(photo)
        assert digit.shape == (28, 28) and 0.03 < digit.mean() < 0.4


def test_low_resolution_scans_are_enlarged_blocky():
    (photo, *_), _ = handwriting_set("handwriting_8px", 1, seed=0)
    assert min(photo.size) > 40  # 8 px of digit, enlarged to a photo


def test_accuracy_per_source_with_its_wilson_interval():
    sets = {k: v for k, v in source_sets(1, seed=0).items() if k != "fonts"}
    assert set(sets) == set(SOURCES)

    def says_three(x: torch.Tensor) -> torch.Tensor:
        scores = torch.zeros(len(x), 10)
        scores[:, 3] = 1
        return scores

    scores = evaluate_sources(says_three, sets)
    for score in scores.values():
        assert (score.correct, score.total) == (1, 10)
        assert (score.low, score.high) == wilson_interval(1, 10)
        assert score.to_report()["n"] == 10
    figure = sources_figure(sets, scores)
    (mosaic,) = figure.axes  # one image: per source a row as given, a row as the model saw it
    answers = [text.get_text() for text in mosaic.texts]
    assert len(answers) == 10 * len(sets) and answers.count("read 3") == len(sets)
    assert [label.get_text() for label in mosaic.get_yticklabels()][::2] == [
        name.replace("_", " ") for name in sets
    ]
