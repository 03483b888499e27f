"""IDX reading, splits and the device batch loader (fast: fake files, plus real MNIST if set)."""

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_lab.config import load_config
from mnist_lab.data import mnist as data
from mnist_lab.data.loader import (
    AUGMENTATIONS,
    BatchLoader,
    affine_theta,
    augment_spec,
    low_resolution,
    off_centre,
    parse_augment,
    random_affine,
    stroke_width,
    warp,
)
from mnist_lab.errors import ConfigError, DataError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as an IDX file."""
    magic = 0x0800 + array.ndim
    dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def fake_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10


def write_mnist(root: Path, n_train: int = 200, n_test: int = 50, gz: bool = False) -> Path:
    """Fake MNIST under root/MNIST/raw/; returns root."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images, labels = fake_arrays(n)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            payload = idx_bytes(array)
            name = f"{split}-{kind}-ubyte"
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (raw / name).write_bytes(payload)
    return root


def fake_splits_source(n_train: int = 2000, n_test: int = 500) -> data.MnistArrays:
    rng = np.random.default_rng(1)
    return data.MnistArrays(
        train_images=torch.from_numpy(rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)),
        train_labels=torch.from_numpy(rng.integers(0, 10, n_train)),
        test_images=torch.from_numpy(rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)),
        test_labels=torch.from_numpy(rng.integers(0, 10, n_test)),
    )


# IDX reader


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path: Path, gz: bool) -> None:
    images, labels = fake_arrays(7)
    for name, array in (("img", images), ("lbl", labels)):
        payload = idx_bytes(array)
        if gz:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (tmp_path / name).write_bytes(payload)
    x, y = data.read_idx(tmp_path / "img"), data.read_idx(tmp_path / "lbl")
    assert x.dtype == y.dtype == torch.uint8
    assert x.shape == (7, 28, 28) and y.shape == (7,)
    assert np.array_equal(x.numpy(), images) and np.array_equal(y.numpy(), labels)


def test_read_idx_truncated(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(fake_arrays(3)[0])[:-100])
    with pytest.raises(
        DataError, match=r"truncated: header says 3×28×28 = 2352 bytes, file holds 2252"
    ):
        data.read_idx(path)


def test_read_idx_truncated_gz(tmp_path: Path) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(fake_arrays(30)[1]))[:-10])
    with pytest.raises(DataError, match=r"labels\.gz"):
        data.read_idx(path)


def test_read_idx_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(100))
    with pytest.raises(DataError, match=r"bad: not an MNIST IDX file.*download MNIST again"):
        data.read_idx(path)


def test_read_idx_wrong_image_size(tmp_path: Path) -> None:
    path = tmp_path / "img"
    path.write_bytes(idx_bytes(np.zeros((2, 32, 32), np.uint8)))
    with pytest.raises(DataError, match="32×32"):
        data.read_idx(path)


# load_mnist


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_fake(tmp_path: Path, gz: bool) -> None:
    arrays = data.load_mnist(write_mnist(tmp_path, gz=gz), download=False)
    assert arrays.train_images.shape == (200, 28, 28) and arrays.train_images.dtype == torch.uint8
    assert arrays.train_labels.shape == (200,) and arrays.train_labels.dtype == torch.int64
    assert arrays.test_images.shape == (50, 28, 28) and arrays.test_labels.shape == (50,)


def test_load_mnist_count_mismatch(tmp_path: Path) -> None:
    root = write_mnist(tmp_path)
    labels = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(idx_bytes(np.zeros(49, np.uint8)))
    with pytest.raises(DataError, match="holds 50 images but t10k-labels-idx1-ubyte holds 49"):
        data.load_mnist(root, download=False)


def test_load_mnist_missing_download_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    def offline_mnist(root: str, train: bool, download: bool) -> None:
        calls.append(root)
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz: Name or service not known"
        )

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline_mnist)
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        data.load_mnist(root)
    assert calls == [str(root)]
    message = str(err.value)
    assert str(root / "MNIST" / "raw") in message
    for name in data.RAW_FILES.values():
        assert name in message
    assert "MNIST_DATA_DIR" in message and "--data-dir" in message
    assert "download failed" in message


def test_resolve_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MNIST_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("MNIST_DATA_DIR")
    assert data.resolve_data_dir(None) == Path.cwd() / "data"


@pytest.fixture(scope="module")
def real_mnist() -> data.MnistArrays:
    if not os.environ.get("MNIST_DATA_DIR"):
        pytest.skip("MNIST_DATA_DIR not set: real-MNIST tests need the dataset")
    return data.load_mnist(download=False)


def test_real_mnist(real_mnist: data.MnistArrays) -> None:
    assert real_mnist.train_images.shape == (60000, 28, 28)
    assert real_mnist.test_images.shape == (10000, 28, 28)
    assert torch.bincount(real_mnist.train_labels).tolist() == TRAIN_COUNTS
    assert torch.bincount(real_mnist.test_labels).tolist() == TEST_COUNTS
    assert int(real_mnist.train_images.max()) == 255


def test_real_splits_stratified(real_mnist: data.MnistArrays) -> None:
    splits = data.make_splits(real_mnist, val_size=5000, seed=0)
    assert len(splits.train_y) == 55000 and len(splits.val_y) == 5000
    assert len(splits.test_y) == 10000
    full = torch.tensor(TRAIN_COUNTS) / 60000
    for y in (splits.train_y, splits.val_y):
        assert (torch.bincount(y, minlength=10) / len(y) - full).abs().max() < 0.01


# splits


def test_splits_sizes_and_disjoint() -> None:
    arrays = fake_splits_source()
    # Rows are random bytes, so a row's content identifies its index.
    row_id = {row.tobytes(): i for i, row in enumerate(arrays.train_images.numpy())}
    s = data.make_splits(arrays, val_size=300, seed=3)
    assert (len(s.train_x), len(s.val_x), len(s.test_x)) == (1700, 300, 500)
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    train_ids = {row_id[r.tobytes()] for r in s.train_x.numpy()}
    val_ids = {row_id[r.tobytes()] for r in s.val_x.numpy()}
    assert len(train_ids) == 1700 and not train_ids & val_ids
    for x, y in ((s.train_x, s.train_y), (s.val_x, s.val_y)):
        assert torch.equal(arrays.train_labels[[row_id[r.tobytes()] for r in x.numpy()]], y)


def test_splits_stratified_subsets() -> None:
    arrays = fake_splits_source()
    s = data.make_splits(arrays, val_size=500, max_train_samples=1000, max_test_samples=200)
    assert (len(s.train_y), len(s.val_y), len(s.test_y)) == (1000, 500, 200)
    for y, ref in ((s.train_y, arrays.train_labels), (s.test_y, arrays.test_labels)):
        p_ref = torch.bincount(ref, minlength=10) / len(ref)
        assert (torch.bincount(y, minlength=10) / len(y) - p_ref).abs().max() < 0.01
    # Larger than available keeps everything.
    assert len(data.make_splits(arrays, max_train_samples=10**6, val_size=100).train_y) == 1900


def test_splits_seeded() -> None:
    arrays = fake_splits_source()
    a, b = (data.make_splits(arrays, val_size=200, seed=1) for _ in range(2))
    c = data.make_splits(arrays, val_size=200, seed=2)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_x, c.val_x)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"val_size": 5}, "val_size"),
        ({"val_size": 1995}, "val_size"),
        ({"max_train_samples": 0}, "max_train_samples"),
        ({"max_test_samples": 9}, "max_test_samples"),
    ],
)
def test_splits_validation(kwargs: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        data.make_splits(fake_splits_source(), **{"val_size": 100} | kwargs)


def test_splits_to() -> None:
    s = data.make_splits(fake_splits_source(), val_size=100).to("cpu")
    assert s.train_x.dtype == torch.uint8 and s.test_y.dtype == torch.int64


# BatchLoader


def make_loader(n: int = 100, **kwargs) -> BatchLoader:
    images, labels = fake_arrays(n, seed=5)
    kwargs = {"batch_size": 16, "shuffle": True, "seed": 7} | kwargs
    return BatchLoader(torch.from_numpy(images), torch.from_numpy(labels), **kwargs)


def epoch_batches(loader: BatchLoader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


def test_loader_batches() -> None:
    loader = make_loader(shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 7
    x, y = batches[0]
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert batches[-1][0].shape == (4, 1, 28, 28)
    xs = torch.cat([x for x, _ in batches])
    assert torch.equal((xs * 255).round().to(torch.uint8).squeeze(1), loader.images)
    assert len(make_loader(drop_last=True)) == len(list(make_loader(drop_last=True))) == 6


def test_loader_shuffle_covers_all() -> None:
    loader = make_loader()
    ys = torch.cat([y for _, y in epoch_batches(loader, 2)])
    assert torch.equal(ys.sort().values, loader.labels.sort().values)


def test_loader_seeded_per_epoch_and_resumable() -> None:
    loader = make_loader()
    e0, e1, e3 = (epoch_batches(loader, e) for e in (0, 1, 3))
    assert same(e0, epoch_batches(loader, 0))
    assert not same(e0, e1)
    assert same(e3, epoch_batches(make_loader(), 3))  # a fresh (resumed) loader
    assert not same(e0, epoch_batches(make_loader(seed=8), 0))


def test_loader_augment() -> None:
    plain = epoch_batches(make_loader(), 1)
    aug = epoch_batches(make_loader(augment=True), 1)
    assert same(aug, epoch_batches(make_loader(augment=True), 1))
    assert not same(aug, epoch_batches(make_loader(augment=True), 2))
    for (xp, yp), (xa, ya) in zip(plain, aug, strict=True):
        assert torch.equal(yp, ya)  # augmentation leaves the order alone
        assert xa.shape == xp.shape and xa.dtype == torch.float32
        assert xa.min() >= 0 and xa.max() <= 1
        assert not torch.equal(xa, xp)


def test_the_clean_final_epochs_see_the_plain_images() -> None:
    """augment_epochs=2: epochs 1-2 augmented, epoch 3 the plain images (clean_final_epochs)."""
    loader = make_loader(augment="shift:2,noise:0.1", augment_epochs=2)
    for epoch, augmented in ((1, True), (2, True), (3, False)):
        plain = epoch_batches(make_loader(), epoch)  # same order: the shuffle is the same
        assert same(epoch_batches(loader, epoch), plain) is not augmented, epoch


def test_clean_final_epochs_must_fit_the_epochs() -> None:
    with pytest.raises(ConfigError, match=r"clean_final_epochs.*must be in \[0, epochs=3\]"):
        load_config("cnn", {"epochs": 3, "clean_final_epochs": 4})
    assert load_config("cnn", {"epochs": 3, "clean_final_epochs": 3}).clean_final_epochs == 3
    # The detector's scenes are made, not augmented: saying otherwise is an error, not a no-op.
    with pytest.raises(ConfigError, match=r"augment.*must be False for faster_rcnn"):
        load_config("faster_rcnn", {"augment": "shift"})
    with pytest.raises(ConfigError, match=r"clean_final_epochs.*must be 0 for faster_rcnn"):
        load_config("faster_rcnn", {"clean_final_epochs": 1})


def test_random_affine_identity_and_shift() -> None:
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10, 12] = 1
    out = random_affine(x, torch.zeros(2, 2), torch.zeros(2))
    assert torch.allclose(out, x, atol=1e-6)
    shifted = random_affine(x, torch.tensor([[2.0, 0.0], [0.0, -1.0]]), torch.zeros(2))
    assert shifted[0, 0, 10, 14] == pytest.approx(1, abs=1e-5)  # +2 px in x
    assert shifted[1, 0, 9, 12] == pytest.approx(1, abs=1e-5)  # -1 px in y


def test_random_affine_matches_affine_grid() -> None:
    x, shift, angle = torch.rand(5, 1, 28, 28), torch.rand(5, 2) * 4 - 2, torch.rand(5) * 20 - 10
    rad = torch.deg2rad(angle)
    theta = torch.stack(
        [rad.cos(), -rad.sin(), -shift[:, 0] / 14, rad.sin(), rad.cos(), -shift[:, 1] / 14], 1
    ).view(5, 2, 3)
    grid = torch.nn.functional.affine_grid(theta, [5, 1, 28, 28], align_corners=False)
    ref = torch.nn.functional.grid_sample(x, grid, align_corners=False).clamp(0, 1)
    assert torch.allclose(random_affine(x, shift, angle), ref, atol=1e-5)


# Named augmentation ops


def test_parse_augment_forms() -> None:
    assert parse_augment(False) == parse_augment("none") == parse_augment("") == {}
    assert parse_augment(True) == parse_augment("true") == {"shift": 2.0, "rotate": 10.0}
    newer = ("offcentre", "lowres")  # ops added after the preset was named: not in it
    assert list(parse_augment("robust")) == [op for op in AUGMENTATIONS if op not in newer]
    assert parse_augment("noise:0.1 , shift") == {"shift": 3.0, "noise": 0.1}  # applied in order
    assert augment_spec("yes") is True and augment_spec("none") is False
    assert augment_spec("shift:2,rotate:10") == "shift:2,rotate:10"  # as -P logs it
    assert augment_spec("blur:2.5,shift:1") == "blur:2.5,shift:1"  # as given: see its doc


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("tilt", "unknown augmentation 'tilt'"),
        ("blur:9", r"blur magnitude '9' must be in"),
        ("noise:x", "noise magnitude"),
    ],
)
def test_parse_augment_rejects_naming_valid_values(value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        parse_augment(value)
    assert (
        "augment=" in str(err.value) and "robust" in str(err.value) and "elastic" in str(err.value)
    )


@pytest.mark.parametrize("ops", [*AUGMENTATIONS, "robust"])
def test_each_op_shape_range_and_seeded(ops: str) -> None:
    plain = epoch_batches(make_loader(), 1)
    aug = epoch_batches(make_loader(augment=ops), 1)
    assert same(aug, epoch_batches(make_loader(augment=ops), 1))  # same (seed, epoch)
    assert not same(aug, epoch_batches(make_loader(augment=ops), 2))
    assert not same(aug, epoch_batches(make_loader(augment=ops, seed=8), 1))
    for (xp, yp), (xa, ya) in zip(plain, aug, strict=True):
        assert torch.equal(yp, ya)
        assert xa.shape == xp.shape and xa.dtype == torch.float32
        assert xa.min() >= 0 and xa.max() <= 1
    assert not same(plain, aug)


def test_augment_off_and_legacy_true_unchanged() -> None:
    plain = epoch_batches(make_loader(), 1)
    for off in (False, "none", "false"):
        assert same(plain, epoch_batches(make_loader(augment=off), 1))
    legacy = epoch_batches(make_loader(augment=True), 1)
    assert same(legacy, epoch_batches(make_loader(augment="affine"), 1))
    assert same(legacy, epoch_batches(make_loader(augment="shift:2,rotate:10"), 1))


def test_affine_theta_scale_and_shear() -> None:
    x = torch.zeros(1, 1, 28, 28)
    x[:, :, 13:15, 6:8] = 1  # a 2x2 blob 7 px left of the centre (13.5, 13.5)
    half = warp(x, affine_theta(torch.zeros(1, 2), torch.zeros(1), torch.tensor([0.5])))
    cols = (half[0, 0].sum(0) * torch.arange(28)).sum() / half.sum()
    assert cols.item() == pytest.approx(13.5 - 3.5, abs=0.1)  # zoom 0.5: half as far out
    sheared = affine_theta(torch.zeros(1, 2), torch.zeros(1), None, torch.tensor([0.2]))
    assert torch.allclose(sheared, torch.tensor([[1.0, 0.2, 0.0, 0.0, 1.0, 0.0]]))


def test_off_centre_cuts_at_the_border_then_cleans_as_every_path_does() -> None:
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 6:22, 10:18] = 1  # a 16 x 8 bar centred at (13.5, 13.5)
    right, down = torch.tensor(0.0), torch.tensor(math.pi / 2)
    out = off_centre(x, torch.tensor([0.0, 2.0, 14.0]), torch.stack([right, right, down]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1].roll(2, -1)), "2 px off: within clean's tolerance, kept"
    rows = (out[2, 0] > 0).any(1).nonzero().flatten()
    assert len(rows) == 8, "moved 14 px down: the bottom 8 of 16 rows fell off the frame"
    assert abs((rows.float().mean() - 14).item()) <= 1, "what is left is centred again"
    assert out[2].sum() == 8 * 8


def test_low_resolution_reads_a_small_scan_as_blocks() -> None:
    """Factor 1 leaves a digit as it is; factor 2 gives each 2×2 square its mean (a 14-px scan
    enlarged); factor 4 makes a 7-px scan whose 4×4 blocks hold the mean of their pixels."""
    x = torch.rand(3, 1, 28, 28)
    out = low_resolution(x, torch.tensor([1.0, 2.0, 4.0]))
    assert torch.equal(out[0], x[0])
    for k, factor in ((1, 2), (2, 4)):
        means = torch.nn.functional.avg_pool2d(x[k : k + 1], factor)
        blocks = means.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
        assert torch.allclose(out[k : k + 1], blocks, atol=1e-6)
    assert torch.allclose(out.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=1e-5)  # ink kept


def test_stroke_width_thickens_and_thins() -> None:
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 10:18, 12:15] = 1  # a 3-px stroke
    out = stroke_width(x, torch.tensor([1.0, -1.0]))
    assert out[0].sum() == (10 * 5) and out[1].sum() == (6 * 1)


def test_splits_name_each_image_by_its_place_in_the_mnist_files() -> None:
    arrays = fake_splits_source()
    s = data.make_splits(arrays, val_size=300, max_train_samples=1000, max_test_samples=100)
    assert torch.equal(arrays.train_images[s.train_index], s.train_x)
    assert torch.equal(arrays.train_labels[s.val_index], s.val_y)
    assert torch.equal(arrays.test_images[s.test_index], s.test_x)
    assert not set(s.train_index.tolist()) & set(s.val_index.tolist())
    assert s.val_index.dtype == s.test_index.dtype == torch.int64
