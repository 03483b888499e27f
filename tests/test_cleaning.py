"""The one cleaning every digit gets (data/cleaning.py): MNIST's own digits pass unchanged, a
digit moved anywhere in the frame comes back where MNIST's are, and every path applies it: the
pyfunc, `predict`'s files, the ONNX graph."""

import numpy as np
import pytest
import torch
from torch import nn

from mnist_lab.analysis.corruptions import corrupt
from mnist_lab.data.cleaning import (
    MNIST_CENTRE,
    TOLERANCE,
    centre_by_mass,
    centre_of_mass,
    clean,
    shift,
)
from mnist_lab.data.mnist import load_mnist
from mnist_lab.inference import DigitClassifier


def squares(n: int = 8) -> torch.Tensor:
    """[n, 1, 28, 28]: a small 7 (bar and stroke) that a move by 8 px leaves whole."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 10:19, 14:16] = 1.0
    x[:, :, 10:12, 11:14] = 0.6
    return x


def test_shift_moves_by_whole_pixels_with_zero_fill():
    x = torch.arange(2 * 28 * 28, dtype=torch.float32).reshape(2, 1, 28, 28)
    out = shift(x, torch.tensor([2, -3]), torch.tensor([-1, 4]))
    assert torch.equal(out[0, 0, 2:, :-1], x[0, 0, :-2, 1:])
    assert torch.equal(out[1, 0, :-3, 4:], x[1, 0, 3:, :-4])
    assert (out[0, 0, :2] == 0).all() and (out[1, 0, :, :4] == 0).all()


def test_every_mnist_test_digit_is_left_as_it_is(mnist_dir):
    """MNIST centred its digits by mass: none of the 10 000 moves, so a trained model's answers
    on them are the same with and without the cleaning."""
    images = load_mnist(mnist_dir, download=False).test_images.unsqueeze(1).float() / 255
    row, col = centre_of_mass(images)
    assert float((row - MNIST_CENTRE).abs().max()) <= 0.5
    assert float((col - MNIST_CENTRE).abs().max()) <= 0.5
    assert torch.equal(clean(images), images)


@pytest.mark.parametrize("severity", [3, 4, 5])  # 6, 7 and 8 px in a random direction
def test_a_digit_moved_6_to_8_px_comes_back_where_it_was(severity):
    centred = centre_by_mass(squares(32))
    moved = corrupt(centred, "shift", severity, seed=severity)
    assert not torch.equal(moved, centred)
    assert torch.equal(clean(moved), centred)


def test_a_digit_within_the_tolerance_is_left_where_it_is():
    centred = centre_by_mass(squares(4))
    near = shift(centred, torch.tensor([TOLERANCE, -TOLERANCE, 0, 1]), torch.tensor([0, 1, 2, -2]))
    assert torch.equal(clean(near), near)
    far = shift(centred, torch.tensor([TOLERANCE + 1, 0, 0, 0]), torch.tensor([0, 0, 0, 0]))
    assert torch.equal(clean(far)[0], centred[0])


def test_no_ink_is_pushed_out_and_blank_digits_pass():
    x = torch.zeros(3, 1, 28, 28)
    x[0, 0, 0:20, 0:3] = 1.0  # heavy left bar touching the top...
    x[0, 0, 27, 10] = 1.0  # ...and a dot on the bottom row: no room to move down
    out = clean(x)
    assert out.sum() == x.sum()
    assert torch.equal(out[0, 0, 27], torch.roll(x[0, 0, 27], int(out[0, 0, 27].argmax() - 10)))
    assert (out[1:] == 0).all()


def test_the_pyfunc_reads_a_moved_digit_as_the_centred_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))
    classifier = DigitClassifier(model, chunk=5)
    centred = centre_by_mass(squares(12) * torch.rand(12, 1, 1, 1))
    moved = corrupt(centred, "shift", 5, seed=1)
    assert np.allclose(
        classifier.predict(moved.numpy()).to_numpy(), classifier.predict(centred.numpy()).to_numpy()
    )
    raw = model(moved).argmax(1).numpy()
    assert (
        classifier.predict(moved.numpy())["digit"].to_numpy() == model(centred).argmax(1).numpy()
    ).all()
    assert not np.array_equal(raw, model(centred).argmax(1).numpy())


def test_the_onnx_graph_cleans_as_the_pyfunc_does():
    pytest.importorskip("onnxruntime")
    from mnist_lab.tracking.onnx import classifier_difference, export_classifier, session

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).eval()
    centred = centre_by_mass(squares(16) * torch.rand(16, 1, 1, 1))
    moved = corrupt(centred, "shift", 4, seed=2)[:, 0]
    onnx_bytes = export_classifier(model, moved[:4].numpy())
    digits = (moved * 255).round().to(torch.uint8).numpy()
    assert classifier_difference(onnx_bytes, model, digits) <= 1e-5
    probs, _ = session(onnx_bytes).run(None, {"digits": moved.numpy()})
    with torch.no_grad():
        expected = model(centred).softmax(1).numpy()
    assert np.abs(probs - expected).max() <= 1e-5


def test_the_off_centre_measure_splits_a_shift_by_ink_lost_to_the_border(monkeypatch):
    """`measure off-centre` reads each large shift twice more: the digits that kept their ink in
    the frame (beside the same digits unshifted) and those the border cut."""
    from mnist_lab.measure import off_centre

    tall = torch.zeros(40, 1, 28, 28)
    tall[:20, :, 4:24, 12:16] = 1.0  # 20 rows tall: a move of 8 px cuts most of these
    tall[20:, :, 11:17, 12:16] = 1.0  # 6 rows: a move of 8 px leaves these whole
    moved = off_centre.corrupted(tall, "shift", 5)
    lost = off_centre.ink_lost(tall, moved)
    assert lost.shape == (40,) and (lost[20:] == 0).all() and (lost[:20] > 0).sum() >= 10

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(x), 10)

    monkeypatch.setattr(off_centre, "load_module", lambda folder: (None, Fixed()))
    result = off_centre.measure("folder", tall, torch.zeros(40, dtype=torch.long), 40, {})
    cut = int((lost > off_centre.CUT).sum())
    assert result["shift_5_cut"]["n"] == cut and result["shift_5_in_frame"]["n"] == 40 - cut
    assert result["shift_5_in_frame_unshifted"]["n"] == 40 - cut
    assert "shift_1_cut" not in result, "a 2-px move cuts nothing: no split"
