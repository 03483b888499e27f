"""`python -m mnist_lab.measure real-digits`: the font-rendered photo set and its command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_lab.data import font_digits
from mnist_lab.data.font_digits import RealDigitsError, find_fonts, generate, read_labels
from mnist_lab.data.images import collect
from mnist_lab.measure import real_digits
from mnist_lab.measure.__main__ import main as measure_main


@pytest.fixture(scope="module")
def fonts() -> list[font_digits.Font]:
    """A few of this machine's fonts, or a skip naming how to install some."""
    try:
        return find_fonts()[:4]
    except RealDigitsError as err:
        pytest.skip(str(err))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_the_same_seed_draws_the_same_set_and_another_seed_another(tmp_path, fonts):
    generate(tmp_path / "a", 2, seed=7, fonts=fonts)
    generate(tmp_path / "b", 2, seed=7, fonts=fonts)
    generate(tmp_path / "c", 2, seed=8, fonts=fonts)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a").keys() == files(tmp_path / "c").keys()
    assert files(tmp_path / "a") != files(tmp_path / "c")
    assert (tmp_path / "a/labels.csv").read_text() == (tmp_path / "b/labels.csv").read_text()


def test_n_per_class_labelled_dark_on_light_pngs_of_varied_size(tmp_path, fonts):
    rows = generate(tmp_path, 4, seed=0, fonts=fonts)
    assert read_labels(tmp_path) == rows
    assert [r["digit"] for r in rows] == [str(d) for d in range(10) for _ in range(4)]
    sizes = set()
    for row in rows:
        path = tmp_path / row["file"]
        assert path.parent.name == row["digit"] and path.name.startswith(row["font"] + "-")
        with Image.open(path) as image:
            assert image.format == "PNG"
            grey = np.asarray(image.convert("L"), dtype=np.float32)
            sizes.add(image.size)
        border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        assert np.median(border) > 150 and grey.min() < np.median(border) - 60
    assert len(sizes) > 20
    assert {r["font"] for r in rows} == {f.name for f in fonts}


def test_collect_reads_the_set_back_mnist_like(tmp_path, fonts):
    rows = generate(tmp_path, 2, seed=0, fonts=fonts)
    sources, images = collect([tmp_path / r["file"] for r in rows])
    assert len(sources) == 20 and images.shape == (20, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert (images.reshape(20, -1).max(axis=1) > 0.5).all()  # a digit in each
    assert (images[:, 0, :] < 0.5).all()  # light digit on black, as MNIST


def test_no_fonts_is_a_clear_error_and_exit_status_1(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "fonts"
    empty.mkdir()
    (empty / "broken.ttf").write_bytes(b"not a font")
    monkeypatch.setattr(font_digits, "FONT_DIRS", (empty,))
    with pytest.raises(RealDigitsError, match="apt-get install"):
        find_fonts()
    assert measure_main(["real-digits", "--out", str(tmp_path / "set"), "--no-log"]) == 1
    err = capsys.readouterr().err
    assert "no TrueType/OpenType font" in err and "fonts-dejavu" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["0", "-3", "ten"])
def test_bad_per_class_exits_2_naming_the_option(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exited:
        measure_main(["real-digits", "--out", str(tmp_path), "--per-class", value])
    assert exited.value.code == 2
    assert "--per-class" in capsys.readouterr().err
    with pytest.raises(RealDigitsError, match="at least 1"):
        generate(tmp_path, int(value) if value != "ten" else 0, fonts=[])


def test_a_folder_that_is_not_a_set_is_refused(tmp_path, fonts):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RealDigitsError, match="not a real-digits set"):
        generate(tmp_path, 1, fonts=fonts)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_command_draws_the_set_and_names_its_fonts(tmp_path, monkeypatch, capsys, fonts):
    monkeypatch.setattr(font_digits, "find_fonts", lambda: fonts)
    out = tmp_path / "set"
    assert measure_main(["real-digits", "--out", str(out), "--per-class", "1", "--no-log"]) == 0
    printed = capsys.readouterr().out
    assert f"set {out}: 10 images, {min(len(fonts), 10)} fonts, seed 0" in printed
    assert len(read_labels(out)) == 10


def test_score_counts_per_digit_per_font_and_the_mistakes():
    rows = [{"digit": str(d), "font": f} for d in (3, 5) for f in ("A", "B")]
    result = real_digits.score("m", np.array([3, 3, 5, 3]), rows)
    assert result.accuracy == 0.75 and result.per_digit == {3: 1.0, 5: 0.5}
    assert result.per_font == {"A": 1.0, "B": 0.5} and result.confusions == [(5, 3, 1)]
    assert "accuracy 75.00%" in real_digits.report(result)


def test_tex_symbol_fonts_that_draw_no_digits_are_left_out():
    """matplotlib ships cmex10 (brackets) and cmsy10 (∞, ∈, △, ...) at the digits' code points:
    ten different glyphs, none a digit, so only the name list keeps them out of the sets."""
    from matplotlib import get_data_path

    folder = Path(get_data_path()) / "fonts" / "ttf"
    names = {font.name for font in find_fonts([folder])}
    assert {"cmr10", "DejaVuSans"} <= names
    assert not names & {"cmex10", "cmsy10"}
