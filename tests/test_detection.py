"""Faster R-CNN: scenes (tight boxes, no overlap, seeded, split sources), the model per backbone,
backbone weights, bad input, and one end-to-end run on a tiny subset."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient

from mnist_lab import names
from mnist_lab.config import load_config
from mnist_lab.data.mnist import load_mnist, make_splits
from mnist_lab.data.scenes import SceneLoader, ink_boxes
from mnist_lab.engine.detection import DetectionTask
from mnist_lab.errors import ConfigError, WeightsError
from mnist_lab.models.build import build_model
from mnist_lab.models.faster_rcnn import SmallBackbone
from mnist_lab.train import train

TINY = {"epochs": 1, "max_train_samples": 60, "max_test_samples": 40, "val_size": 20}
SCENE = {"canvas_size": 64, "min_scale": 0.8, "max_scale": 1.4}


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic 28-px 'digits': a random filled rectangle each, so the ink box is known."""
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(200, 28, 28, dtype=torch.uint8)
    for i in range(200):
        x1, y1 = torch.randint(2, 12, (2,), generator=g).tolist()
        w, h = torch.randint(3, 14, (2,), generator=g).tolist()
        images[i, y1 : y1 + h, x1 : x1 + w] = 255
    return images, torch.randint(0, 10, (200,), generator=g)


def overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


# Scenes


def test_ink_boxes_are_tight() -> None:
    image = torch.zeros(1, 28, 28)
    image[0, 5:9, 10:20] = 1.0
    image[0, 0, 0] = 0.05  # faint anti-aliasing below the ink threshold
    assert ink_boxes(image).tolist() == [[10.0, 5.0, 20.0, 9.0]]
    assert ink_boxes(torch.zeros(1, 28, 28)).tolist() == [[0.0, 0.0, 0.0, 0.0]]


def test_single_digit_scene_boxes_are_the_ink_of_the_canvas(digits) -> None:
    images, labels = digits
    scenes = next(iter(SceneLoader(images, labels, 200, **SCENE)))
    assert scenes.images.shape == (200, 1, 64, 64)
    assert float(scenes.images.min()) >= 0 and float(scenes.images.max()) <= 1
    assert torch.equal(scenes.labels[:, 0], labels + 1)  # file order, labels 1..10
    assert torch.equal(scenes.boxes[:, 0], ink_boxes(scenes.images[:, 0]))
    # The box is tight: every edge row/column of the box holds ink.
    for image, box in zip(scenes.images[:20, 0], scenes.boxes[:20, 0], strict=True):
        x1, y1, x2, y2 = box.int().tolist()
        ink = image[y1:y2, x1:x2] > 0.1
        assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()
    sizes = scenes.boxes[:, 0, 2:] - scenes.boxes[:, 0, :2]
    assert sizes.std(0).min() > 0.5  # random scale


def test_multi_digit_scenes_do_not_overlap_and_use_every_digit_at_most_once(digits) -> None:
    images, labels = digits
    loader = SceneLoader(images, labels, 16, **SCENE, max_digits=4, shuffle=True, seed=3)
    layout = loader.layout()
    used = layout.index[layout.index >= 0]
    assert len(used.unique()) == len(used) and len(used) >= 0.8 * len(labels)
    counts = (layout.index >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() == 4
    for scenes in loader:
        for boxes, lab in zip(scenes.boxes, scenes.labels, strict=True):
            present = boxes[lab > 0]
            for i in range(len(present)):
                for j in range(i):
                    assert not overlaps(present[i], present[j])
        target = scenes.targets()[0]
        assert target["boxes"].shape[1] == 4 and target["labels"].min() >= 1


def test_same_seed_same_scenes_other_epoch_other_scenes(digits) -> None:
    images, labels = digits

    def first(seed: int, epoch: int) -> torch.Tensor:
        loader = SceneLoader(images, labels, 32, **SCENE, max_digits=4, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return next(iter(loader)).images

    assert torch.equal(first(0, 1), first(0, 1))
    assert not torch.equal(first(0, 1), first(0, 2))
    assert not torch.equal(first(0, 1), first(1, 1))


def test_scenes_come_from_their_own_split(mnist_dir) -> None:
    splits = make_splits(
        load_mnist(mnist_dir), val_size=100, max_train_samples=200, max_test_samples=100
    )
    config = load_config("faster_rcnn", {**TINY, "max_digits": 1})
    train, val, test = DetectionTask(config).loaders(splits)
    for loader, split_x in ((train, splits.train_x), (val, splits.val_x), (test, splits.test_x)):
        assert loader.images is split_x
    # One-digit test scenes: the test digits, in order, each the only thing on its canvas.
    scenes = next(iter(test))
    assert torch.equal(scenes.labels[:, 0] - 1, splits.test_y[: len(scenes)])
    assert scenes.images.sum() > 0


# Model


@pytest.mark.parametrize("backbone", ["small", "mobilenet_v3", "resnet50"])
def test_forward_per_backbone(backbone: str) -> None:
    # 32-px canvases seen at 64 px: shapes, not accuracy; small images keep the test fast.
    options = {"backbone": backbone, "canvas_size": 32, "min_scale": 0.5, "max_scale": 1.0}
    options["image_size"] = 64
    model = build_model("faster_rcnn", **options)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 10)
    assert torch.allclose(logits.softmax(1).sum(1), torch.ones(2))
    # Training: torchvision's four losses from canvases and targets (labels 1..10).
    model.train()
    images = torch.rand(1, 1, 32, 32)
    target = [{"boxes": torch.tensor([[4.0, 6.0, 20.0, 28.0]]), "labels": torch.tensor([10])}]
    losses = model.detector(list(images), target)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()


def test_no_800_px_resize_and_anchors_for_small_canvases() -> None:
    model = build_model("faster_rcnn")
    assert model.detector.transform.min_size == (64,) and model.detector.transform.max_size == 64
    sizes = [s[0] for s in model.detector.rpn.anchor_generator.sizes]
    assert sizes == sorted(sizes) and sizes[0] >= 8 and sizes[-1] <= 64


def test_no_box_gives_uniform_probabilities() -> None:
    model = build_model("faster_rcnn").eval()
    model.detector.roi_heads.score_thresh = 1.1  # nothing can pass
    with torch.no_grad():
        probs = model(torch.rand(3, 1, 28, 28)).softmax(1)
    assert torch.allclose(probs, torch.full((3, 10), 0.1))


def test_backbone_weights_file_loads(tmp_path: Path) -> None:
    body = SmallBackbone()
    with torch.no_grad():
        body.layer3[0][0].weight.fill_(0.25)
    path = tmp_path / "small.pt"
    torch.save(body.state_dict(), path)
    model = build_model("faster_rcnn", weights_backbone=str(path))
    loaded = model.detector.backbone.body["layer3"][0][0].weight
    assert torch.all(loaded == 0.25)


@pytest.mark.parametrize(
    ("backbone", "network", "first_conv"),
    [
        ("mobilenet_v3", torchvision.models.mobilenet_v3_large, "features.0.0.weight"),
        ("resnet50", torchvision.models.resnet50, "conv1.weight"),
    ],
)
def test_a_torchvision_backbone_file_fills_the_fpn_body(tmp_path, backbone, network, first_conv):
    net = network(weights=None)
    with torch.no_grad():
        net.get_parameter(first_conv).fill_(0.25)
    path = tmp_path / f"{backbone}.pt"
    torch.save(net.state_dict(), path)
    model = build_model("faster_rcnn", backbone=backbone, weights_backbone=str(path))
    body = model.detector.backbone.body.body  # GreyToImageNet → BackboneWithFPN → its layers
    stem = body.get_parameter(first_conv.removeprefix("features."))
    assert torch.all(stem == 0.25)
    trains = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trains and len(trains) < len({n.split(".")[0] for n, _ in body.named_parameters()})


def test_backbone_weights_file_for_another_backbone(tmp_path: Path) -> None:
    path = tmp_path / "small.pt"
    torch.save(SmallBackbone().state_dict(), path)
    with pytest.raises(WeightsError, match=r"weights_backbone=.*mobilenet_v3.*missing"):
        build_model("faster_rcnn", backbone="mobilenet_v3", weights_backbone=str(path))


def test_imagenet_backbone_offline_names_the_cache_file(tmp_path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("no network in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    url = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url
    with pytest.raises(WeightsError, match=Path(url).name) as info:
        build_model("faster_rcnn", backbone="mobilenet_v3", weights_backbone="imagenet")
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value)


# Bad input, rejected by the config before any data or run


@pytest.mark.parametrize(
    ("overrides", "parameter"),
    [
        ({"canvas_size": 40, "max_scale": 1.6}, "canvas_size"),
        ({"backbone": "vgg"}, "backbone"),
        ({"backbone": "small", "weights_backbone": "imagenet"}, "weights_backbone"),
        ({"min_scale": 1.5, "max_scale": 1.0}, "min_scale"),
        ({"max_digits": 5}, "max_digits"),
        ({"weights_backbone": "/no/such/file.pt"}, "weights_backbone"),
    ],
)
def test_bad_options_name_the_parameter(overrides: dict, parameter: str) -> None:
    with pytest.raises(ConfigError, match=parameter):
        load_config("faster_rcnn", overrides)


# End to end


@pytest.mark.slow  # trains a large model (Faster R-CNN)
def test_train_logs_a_complete_detector_run(mnist_dir, mlflow_store) -> None:
    import mlflow

    config = load_config("faster_rcnn", {**TINY, "batch_size": 16, "eval_batch_size": 20})
    result = train(config)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[names.TAG_MODEL] == "faster_rcnn"
    assert run.data.params["backbone"] == "small" and run.data.params["canvas_size"] == "64"
    final = {
        *names.metric_names("final"),
        names.TEST_NO_DETECTION_RATE,
        names.TEST_MAP_50,
        names.TEST_MAP,
        names.TEST_ECE,
        names.TEST_ECE_CALIBRATED,
        names.TEST_BRIER,
        names.TEMPERATURE,
    }
    assert final | {names.TRAIN_LOSS, names.VAL_ACCURACY, names.VAL_LOSS} <= set(run.data.metrics)
    assert run.data.metrics[names.TEST_LOSS] > 0
    assert 0 <= run.data.metrics[names.TEST_MAP] <= run.data.metrics[names.TEST_MAP_50] <= 1
    artifacts = {
        names.PLOT_DETECTIONS,
        names.PLOT_CONFUSION_MATRIX,
        names.PLOT_LEARNING_CURVES,
        names.PLOT_RELIABILITY,
        names.REPORT_CLASSIFICATION,
        names.REPORT_CALIBRATION,
        names.CHECKPOINT_LAST,
    }
    found = {
        f.path
        for d in ("plots", "reports", "checkpoints")
        for f in client.list_artifacts(run.info.run_id, d)
    }
    assert artifacts <= found

    uri = f"runs:/{result.run_id}/{names.MODEL_ARTIFACT}"
    digits = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    out = mlflow.pyfunc.load_model(uri).predict(digits)  # the pyfunc every model shares
    probs = out[[f"prob_{k}" for k in range(10)]].to_numpy(dtype=np.float64)
    assert probs.shape == (4, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (out["digit"].to_numpy() == probs.argmax(axis=1)).all()
    # Served probabilities are the wrapper's, calibrated: softmax(log p / T).
    served = mlflow.pyfunc.load_model(uri).get_raw_model()
    temperature = run.data.metrics[names.TEMPERATURE]
    assert float(served.temperature) == pytest.approx(temperature)
    with torch.no_grad():
        raw = served.classifier(torch.from_numpy(digits).unsqueeze(1)).double()
    np.testing.assert_allclose(probs, (raw / temperature).softmax(1).numpy(), atol=1e-5)

    detector_uri = f"runs:/{result.run_id}/{names.DETECTOR_ARTIFACT}"
    detector = mlflow.pyfunc.load_model(detector_uri).get_raw_model()
    detections = detector.eval()([torch.rand(1, 64, 64)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}

    # The detector as ONNX (the classifier loops over a list of images: no batch-dynamic graph),
    # checked at logging on test digits' scenes; onnxruntime answers a scene as torch does.
    assert run.data.metrics[names.ONNX_MAX_PROB_DIFF] <= 1e-4
    assert names.TAG_ONNX_ERROR not in run.data.tags
    onnx_model = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{result.run_id}' AND name = 'onnx_detector'",
        output_format="list",
    )[0]
    scene = torch.rand(1, 64, 64)
    answer = mlflow.pyfunc.load_model(onnx_model.model_uri).predict(scene.numpy())
    with torch.no_grad():
        expected = detector([scene])[0]
    np.testing.assert_allclose(answer["scores"], expected["scores"].numpy(), atol=1e-4)
    assert (answer["labels"] == expected["labels"].numpy()).all()

    # The detector's own runs skip the corruption suite; `robustness` evaluates its logged
    # model through the classifier wrapper, with the metric names every model has.
    from mnist_lab.serving.robustness_options import RobustnessOptions
    from mnist_lab.serving.robustness_run import robustness

    checked = robustness(
        RobustnessOptions(run_id=result.run_id, samples=10, data_dir=str(mnist_dir))
    )
    assert checked.source_run_id == result.run_id
    robust = client.get_run(checked.run_id).data.metrics
    assert 0.0 <= robust[names.ROBUST_ACCURACY_MEAN] <= 1.0
    assert names.robust_accuracy("fog") in robust


def test_detection_task_counts_no_box_as_wrong(digits) -> None:
    images, labels = digits
    model = build_model("faster_rcnn").eval()
    model.detector.roi_heads.score_thresh = 1.1
    evaluation = DetectionTask(load_config("faster_rcnn")).evaluate(
        model, SceneLoader(images[:8], labels[:8], 4, **SCENE), False
    )
    assert evaluation.accuracy == 0.0 and (evaluation.predictions == -1).all()
    assert evaluation.loss > 0 and evaluation.probabilities.shape == (8, 10)
