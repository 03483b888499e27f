"""predict and serve on a tiny trained cnn: MNIST-style preprocessing of any image, IDX files,
folders, bad input, and `mlflow models serve` answering real test digits."""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from lab_helpers import free_port, server_process, sqlite_store, venv_env
from PIL import Image

from mnist_lab.cli import main
from mnist_lab.data.images import mnist_style
from mnist_lab.inference import MAX_BATCH

N = 12  # real MNIST test digits used throughout


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One cnn trained on 2 000 images, registered as mnist-cnn@champion; N test digits."""
    import os

    from mnist_lab.config import load_config
    from mnist_lab.data.mnist import load_mnist
    from mnist_lab.train import train

    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("MNIST_DATA_DIR is not set: real-MNIST test")
    folder = tmp_path_factory.mktemp("predict")
    with sqlite_store(folder) as uri:
        config = {"epochs": 2, "max_train_samples": 2000, "max_test_samples": 200, "val_size": 500}
        config["robustness_samples"] = 0  # what it serves, not how it fails under corruptions
        run_id = train(load_config("cnn", config)).run_id
        assert main(["register", "--model", "cnn"]) == 0
        mnist = load_mnist()
        yield {
            "uri": uri,
            "folder": folder,
            "run_id": run_id,
            "digits": mnist.test_images[:N].numpy(),  # uint8 [N, 28, 28]
            "labels": mnist.test_labels[:N].numpy(),
        }


def predicted(capsys, *argv) -> list[dict]:
    assert main(["predict", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def on_paper(digit: np.ndarray, size: tuple[int, int], ink=(0, 0, 0), paper=(255, 255, 255)):
    """A uint8 digit drawn as `ink` on `paper` (RGB), resized to `size` (w, h), off-centre."""
    side = min(size) // 2
    big = Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(big, dtype=np.float32)[..., None] / 255
    canvas = np.ones((size[1], size[0], 3), np.float32) * np.array(paper, np.float32)
    patch = alpha * np.array(ink, np.float32) + (1 - alpha) * np.array(paper, np.float32)
    canvas[
        size[1] // 8 : size[1] // 8 + patch.shape[0], size[0] // 5 : size[0] // 5 + patch.shape[1]
    ] = patch
    return Image.fromarray(canvas.astype(np.uint8))


def test_mnist_style_recovers_a_real_digit_from_a_photo_like_image(lab):
    correlations = []
    for digit in lab["digits"]:
        image = on_paper(digit, (150, 210), ink=(30, 30, 120), paper=(250, 240, 200))
        restored = mnist_style(image)
        assert restored.shape == (28, 28) and restored.dtype == np.float32
        assert restored.min() >= 0 and restored.max() <= 1
        # Centred by mass where MNIST centres its digits (pixel 14, 14).
        ys, xs = np.indices(restored.shape)
        centre = (ys * restored).sum() / restored.sum(), (xs * restored).sum() / restored.sum()
        assert abs(centre[0] - 14) <= 0.75 and abs(centre[1] - 14) <= 0.75
        correlations.append(np.corrcoef(restored.ravel(), digit.ravel() / 255)[0, 1])
    # MNIST digits already sit in a 20-px box centred by mass: the round trip is close.
    assert min(correlations) > 0.6 and np.mean(correlations) > 0.9, correlations


def test_mnist_style_removes_uneven_lighting_and_paper_noise(lab):
    """A photo under a lamp: paper from grey to white across the page, grain, a few specks. What
    comes out is the digit the clean scan gives, with black paper around it. (Without the lamp
    divided out: differences 0.05-0.17, correlations 0.16-0.5.)"""
    rng = np.random.default_rng(0)
    differences, correlations = [], []
    for digit in lab["digits"][:8]:
        clean = mnist_style(on_paper(digit, (150, 210), ink=(20, 20, 20), paper=(255, 255, 255)))
        photo = np.asarray(on_paper(digit, (150, 210), ink=(20, 20, 20), paper=(255, 255, 255)))
        photo = photo.astype(np.float32)
        light = np.linspace(0.55, 1.0, photo.shape[1], dtype=np.float32)[None, :, None]
        photo = photo * light + rng.normal(0, 6, photo.shape)  # lamp from the right, grain
        specks = rng.integers(0, photo.shape[0], 4), rng.integers(0, photo.shape[1], 4)
        photo[specks] = 40  # four dark specks on the paper
        restored = mnist_style(Image.fromarray(photo.clip(0, 255).astype(np.uint8)))
        differences.append(np.abs(restored - clean).mean())
        correlations.append(np.corrcoef(restored.ravel(), clean.ravel())[0, 1])
        assert (restored[clean == 0] > 0.3).mean() < 0.01  # no paper read as ink
    assert np.mean(differences) < 0.04 and min(correlations) > 0.75, (differences, correlations)
    assert np.mean(correlations) > 0.9, correlations


def test_mnist_style_leaves_an_mnist_digit_as_it_is(lab):
    """An MNIST digit saved as an image comes back as it was (its box is already MNIST's)."""
    for digit in lab["digits"]:
        restored = mnist_style(Image.fromarray(digit))
        assert np.abs(restored - digit / 255).mean() < 0.01


def test_mnist_style_blank_and_tiny_images():
    assert not mnist_style(Image.new("RGB", (40, 30), "white")).any()
    dot = Image.new("L", (5, 3), 255)
    dot.putpixel((1, 1), 0)
    restored = mnist_style(dot)
    assert restored.max() == pytest.approx(1.0) and (restored > 0.5).sum() >= 1


def test_predict_images_of_any_size_and_colour(lab, tmp_path, capsys):
    files = []
    styles = [
        ((100, 100), (0, 0, 0), (255, 255, 255), "png"),  # dark on light, grey
        ((57, 83), (200, 0, 0), (255, 255, 150), "jpg"),  # colour, odd size, lossy
        ((300, 200), (255, 255, 255), (0, 0, 0), "png"),  # light on dark, wide
    ]
    for i, digit in enumerate(lab["digits"]):
        size, ink, paper, ext = styles[i % len(styles)]
        files.append(tmp_path / f"digit{i}.{ext}")
        on_paper(digit, size, ink, paper).save(files[-1])
    answers = predicted(capsys, "--model-uri", "models:/mnist-cnn@champion", *map(str, files))
    assert [a["input"] for a in answers] == [str(f) for f in files]
    correct = [a["digit"] == label for a, label in zip(answers, lab["labels"], strict=True)]
    assert sum(correct) >= N - 2, answers
    for a in answers:
        assert a["confidence"] == pytest.approx(max(a["probabilities"]))
        assert sum(a["probabilities"]) == pytest.approx(1, abs=1e-4)


def test_predict_explain_draws_heat_maps_of_the_users_digits(lab, tmp_path, capsys):
    files = []
    for i, digit in enumerate(lab["digits"][:3]):
        files.append(tmp_path / f"mine{i}.png")
        on_paper(digit, (90, 90)).save(files[-1])
    out = tmp_path / "why" / "explained.png"
    argv = ["predict", "--model-uri", "models:/mnist-cnn@champion", "--explain", str(out)]
    assert main([*argv, *map(str, files)]) == 0
    assert "heat maps of 3 digit(s)" in capsys.readouterr().err
    with Image.open(out) as picture:
        assert picture.size[0] > 300 and picture.format == "PNG"
    assert main([*argv[:-1], str(tmp_path / "explained.jpg"), str(files[0])]) == 1
    assert "give a .png file" in capsys.readouterr().err


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = {3: 0x803, 1: 0x801}[array.ndim]
    path.write_bytes(
        struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


def test_predict_idx_and_folders_in_plain_text(lab, tmp_path, capsys):
    write_idx(tmp_path / "few-images-idx3-ubyte", lab["digits"])
    folder = tmp_path / "folder"
    folder.mkdir()
    Image.fromarray(lab["digits"][0]).save(folder / "a.png")
    Image.fromarray(255 - lab["digits"][1]).convert("RGB").save(folder / "b.jpg")
    (folder / "notes.txt").write_text("not a digit")
    argv = ["predict", "--model-uri", f"runs:/{lab['run_id']}/model"]
    assert main([*argv, str(tmp_path / "few-images-idx3-ubyte"), str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == N + 2
    assert lines[0].startswith(f"{tmp_path / 'few-images-idx3-ubyte'}[0]: ")
    assert lines[-2].startswith(f"{folder / 'a.png'}: ") and lines[-1].startswith(
        f"{folder / 'b.jpg'}: "
    )
    digits = [int(line.split(": ")[1].split()[0]) for line in lines]
    assert sum(d == y for d, y in zip(digits[:N], lab["labels"], strict=True)) >= N - 2
    assert digits[-2:] == digits[:2]  # the same two digits, as files, invert or not
    assert all(line.endswith("%)") for line in lines)


def test_bad_inputs_name_the_input(lab, tmp_path, capsys):
    (tmp_path / "text.png").write_text("this is not a PNG")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "no-images").mkdir()
    (tmp_path / "no-images" / "readme.md").write_text("nothing here")
    write_idx(tmp_path / "labels-idx1-ubyte", lab["labels"].astype(np.uint8))
    good = tmp_path / "good.png"
    Image.fromarray(lab["digits"][0]).save(good)
    cases = [
        ([str(tmp_path / "text.png")], f"{tmp_path / 'text.png'}: not a readable image"),
        ([str(tmp_path / "empty.jpg")], f"{tmp_path / 'empty.jpg'}: the file is empty"),
        ([str(tmp_path / "no-images")], f"{tmp_path / 'no-images'}: the folder holds no images"),
        ([str(tmp_path / "missing.png")], f"{tmp_path / 'missing.png'}: no such file or folder"),
        ([str(tmp_path / "labels-idx1-ubyte")], "shape [12] (labels?), not 28×28 images"),
        ([], "no input given"),
        (
            ["--model-uri", "models:/mnist-nope@champion", str(good)],
            "model URI 'models:/mnist-nope@champion' does not resolve",
        ),
        (
            ["--model-uri", "runs:/0123456789abcdef/model", str(good)],
            "model URI 'runs:/0123456789abcdef/model' does not resolve",
        ),
    ]
    for argv, message in cases:
        assert main(["predict", *argv]) == 1, argv
        assert message in capsys.readouterr().err, argv


@pytest.fixture(scope="module")
def server(lab):
    """`mlflow models serve` of mnist-cnn@champion on 127.0.0.1, stopped after."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve"]
    command += ["-m", "models:/mnist-cnn@champion", "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    url = f"http://127.0.0.1:{port}"
    env = venv_env(MLFLOW_TRACKING_URI=lab["uri"])
    with server_process(
        command, f"{url}/ping", lab["folder"] / "serve.log", cwd=lab["folder"], env=env
    ):
        yield url


def invoke(url: str, payload) -> requests.Response:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    headers = {"Content-Type": "application/json"}
    return requests.post(f"{url}/invocations", data=data, headers=headers, timeout=30)


def test_served_model_answers_real_digits(lab, server):
    import mlflow

    # Raw uint8 pixel values, the way a client sends an MNIST digit.
    response = invoke(server, {"inputs": lab["digits"].tolist()})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert len(rows) == N and set(rows[0]) == {"digit", *(f"prob_{k}" for k in range(10))}
    served = np.array([row["digit"] for row in rows])
    assert (served == lab["labels"]).sum() >= N - 2
    local = mlflow.pyfunc.load_model("models:/mnist-cnn@champion").predict(
        lab["digits"].astype(np.float32)
    )
    assert (served == local["digit"].to_numpy()).all()
    # The same digits as floats in [0, 1] get the same answers.
    scaled = invoke(server, {"inputs": (lab["digits"] / 255).tolist()}).json()["predictions"]
    assert [row["digit"] for row in scaled] == served.tolist()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"inputs": np.zeros((2, 27, 28)).tolist()}, "shape"),
        ({"inputs": np.zeros((2, 784)).tolist()}, "shape"),
        ({"inputs": [[["a"] * 28] * 28]}, ""),
        ({"inputs": []}, ""),
        ({"wrong_key": [1, 2]}, ""),
        ("not json at all", ""),
        ({"inputs": (np.zeros((2, 28, 28)) - 5).tolist()}, "0–255"),
        ('{"inputs": [[' + ",".join(["[" + ",".join(["NaN"] * 28) + "]"] * 28) + "]]}", "finite"),
        (
            {"inputs": np.zeros((MAX_BATCH + 1, 28, 28), dtype=np.uint8).tolist()},
            f"over the limit of {MAX_BATCH} per request",
        ),
    ],
)
def test_malformed_payloads_get_4xx_and_the_server_lives_on(lab, server, payload, message):
    response = invoke(server, payload)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert body.get("message"), body
    assert message in body["message"]
    alive = invoke(server, {"inputs": lab["digits"][:1].tolist()})
    assert alive.status_code == 200


def test_concurrent_requests_all_get_correct_answers(lab, server):
    """The serving benchmark's short version: 8 clients at once, every answer a 200 and the
    same digits as one request alone gets."""
    from concurrent.futures import ThreadPoolExecutor

    expected = [
        row["digit"]
        for row in invoke(server, {"inputs": lab["digits"].tolist()}).json()["predictions"]
    ]

    def one(i: int) -> tuple[int, list[int]]:
        response = invoke(server, {"inputs": lab["digits"].tolist()})
        digits = [row["digit"] for row in response.json().get("predictions", [])]
        return response.status_code, digits

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(32)))
    assert [status for status, _ in answers] == [200] * 32
    assert all(digits == expected for _, digits in answers)
