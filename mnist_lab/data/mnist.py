"""MNIST on the device: IDX reading, seeded stratified splits and a batch loader.

The whole dataset is 55 MB of uint8, so it lives on the training device and batches are cut
from it by index: no DataLoader workers, no PIL. Images stay uint8 [N, 28, 28] until a batch is
drawn; batches are float32 [B, 1, 28, 28] in [0, 1] (normalisation is inside the models).
"""

import gzip
import hashlib
import math
import os
import socket
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from mnist_lab.errors import ConfigError, DataError
from mnist_lab.names import IMAGE_SIZE, NUM_CLASSES

DATA_DIR_ENV = "MNIST_DATA_DIR"
DEFAULT_DATA_DIR = "data"
RAW_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim
DOWNLOAD_TIMEOUT_S = 30.0


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder holding MNIST/raw/: `data_dir`, else $MNIST_DATA_DIR, else ./data."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().absolute()


def _corrupt(path: Path, what: str) -> DataError:
    return DataError(
        f"{path}: {what}. Delete it and download MNIST again (load_mnist(download=True) or "
        f"`--data-dir`), or point {DATA_DIR_ENV} at an intact copy."
    )


def read_idx(path: Path) -> torch.Tensor:
    """Read an uint8 IDX file: `path`, else `path` + ".gz".

    Returns uint8 [N, 28, 28] for an image file (magic 2051) or [N] for a label file (2049).
    Raises DataError when the file is missing, its header is wrong or its size does not match.
    """
    path = Path(path)
    if not path.is_file() and path.with_name(path.name + ".gz").is_file():
        path = path.with_name(path.name + ".gz")
    try:
        if path.suffix == ".gz":
            buf = bytearray(gzip.decompress(path.read_bytes()))
        else:
            # readinto a writable buffer: torch.frombuffer then shares it without a copy.
            buf = bytearray(path.stat().st_size)
            with path.open("rb") as f:
                f.readinto(buf)
    except FileNotFoundError:
        raise DataError(
            f"{path}: no such file (nor {path.name}.gz). Download MNIST (load_mnist(download=True))"
            f" or point {DATA_DIR_ENV} / `--data-dir` at the folder holding MNIST/raw/."
        ) from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise _corrupt(path, f"unreadable ({e})") from e

    if len(buf) < 4:
        raise _corrupt(path, f"truncated: {len(buf)} bytes, not even an IDX magic number")
    magic = int.from_bytes(buf[:4], "big")
    if magic not in (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC):
        raise _corrupt(
            path,
            f"not an MNIST IDX file: magic number {magic} (0x{magic:08x}), expected "
            f"{IDX_IMAGES_MAGIC} (images) or {IDX_LABELS_MAGIC} (labels)",
        )
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise _corrupt(path, f"truncated: {len(buf)} bytes, shorter than its {header}-byte header")
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and dims[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise _corrupt(path, f"images are {dims[1]}×{dims[2]}, expected 28×28")
    expected = math.prod(dims)
    payload = len(buf) - header
    if payload != expected:
        shape = "×".join(map(str, dims))
        kind = "truncated" if payload < expected else "too long"
        raise _corrupt(
            path, f"{kind}: header says {shape} = {expected} bytes, file holds {payload}"
        )
    return torch.frombuffer(buf, dtype=torch.uint8, offset=header, count=expected).view(dims)


@dataclass
class MnistArrays:
    """The four MNIST arrays, on the CPU as read from disk."""

    train_images: torch.Tensor  # uint8 [60000, 28, 28]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]


def _missing(raw: Path) -> list[str]:
    return [
        name
        for name in RAW_FILES.values()
        if not (raw / name).is_file() and not (raw / f"{name}.gz").is_file()
    ]


def _download(root: Path) -> None:
    """Fetch MNIST with torchvision into `root`/MNIST/raw/ (all four files in one call)."""
    from torchvision.datasets import MNIST  # slow import, only needed here

    # torchvision's urlopen has no timeout: a firewalled host would hang for minutes.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(previous or DOWNLOAD_TIMEOUT_S)
    try:
        MNIST(root=str(root), train=True, download=True)
    finally:
        socket.setdefaulttimeout(previous)


def load_mnist(data_dir: str | Path | None = None, download: bool = True) -> MnistArrays:
    """Read MNIST from `<data_dir>/MNIST/raw/` (see `resolve_data_dir`), downloading if absent.

    Raises DataError when the files are missing (and cannot be downloaded) or corrupt.
    """
    root = resolve_data_dir(data_dir)
    raw = root / "MNIST" / "raw"
    reason = "download=False"
    if _missing(raw) and download:
        try:
            _download(root)
            reason = "downloaded, yet files are missing"
        except (RuntimeError, OSError) as e:  # URLError, timeouts, read-only folder
            cause = (str(e).strip().splitlines() or [type(e).__name__])[-1]  # the root cause
            reason = f"download failed: {cause}"
    if missing := _missing(raw):
        raise DataError(
            f"MNIST not found in {raw} ({reason}): it needs {', '.join(RAW_FILES.values())} "
            f"(plain or .gz); missing {', '.join(missing)}. Set {DATA_DIR_ENV} or pass `--data-dir`"
            " to the folder that contains MNIST/raw/, or download MNIST there on a machine with"
            " internet access."
        )

    arrays = {key: read_idx(raw / name) for key, name in RAW_FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise _corrupt(raw, f"{split} images/labels have the wrong IDX kind (swapped files?)")
        if len(images) != len(labels):
            raise _corrupt(
                raw,
                f"{RAW_FILES[f'{split}_images']} holds {len(images)} images but "
                f"{RAW_FILES[f'{split}_labels']} holds {len(labels)} labels",
            )
        if len(labels) and int(labels.max()) >= NUM_CLASSES:
            raise _corrupt(raw / RAW_FILES[f"{split}_labels"], f"label {int(labels.max())} > 9")
        arrays[f"{split}_labels"] = labels.long()
    return MnistArrays(**arrays)


@dataclass
class Splits:
    """Train / validation / test tensors: images uint8 [N, 28, 28], labels int64 [N], and each
    image's position in its MNIST file, int64 [N] (train and val: the training file; test: the
    test file), which names a digit across runs.

    The test split is for final evaluation only; model selection uses val.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_index: torch.Tensor
    val_index: torch.Tensor
    test_index: torch.Tensor

    def to(self, device: torch.device | str) -> "Splits":
        """A copy with every tensor on `device` (dtypes unchanged: ~55 MB in all)."""
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class SplitRecord:
    """What one split of a run held, for lineage: two runs on the same data share a digest."""

    split: str  # train, val or test
    size: int
    digest: str  # sha256 of the split's image and label bytes, first 16 hex digits


def split_records(splits: Splits, which: tuple[str, ...] = SPLIT_NAMES) -> list[SplitRecord]:
    """A `SplitRecord` per split in `which` (~0.1 s for all of MNIST on a CPU)."""
    records = []
    for split in which:
        images, labels = getattr(splits, f"{split}_x"), getattr(splits, f"{split}_y")
        digest = hashlib.sha256(images.cpu().contiguous().numpy().tobytes())
        digest.update(labels.cpu().contiguous().numpy().tobytes())
        records.append(SplitRecord(split, len(labels), digest.hexdigest()[:16]))
    return records


def _check_count(name: str, value: int | None, upper: int | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 10:
        raise ConfigError(f"{name} must be an integer ≥ 10, got {value!r}")
    if upper is not None and value > upper:
        raise ConfigError(f"{name} must be at most {upper} (leaving ≥ 10 to train on), got {value}")


def _stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded, label-stratified subset of `size` of `labels`."""
    if size >= len(labels):
        return np.arange(len(labels))
    idx, _ = train_test_split(
        np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
    )
    return np.sort(idx)


def make_splits(
    arrays: MnistArrays,
    *,
    val_size: int = 5000,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
) -> Splits:
    """Hold out a stratified validation split of `val_size` from the training images, drawn
    with `seed` (a run's `split_seed`, not its training seed: runs of different seeds are then
    scored on the same digits).

    `max_train_samples` / `max_test_samples` keep a stratified subset of the remaining
    training images / the test set (quick looks and tests), drawn with the same `seed`; None
    keeps all. Indices within each split are in file order, so val and test batches are in a
    fixed order.
    """
    n_train = len(arrays.train_labels)
    _check_count("val_size", val_size, upper=n_train - 10)
    _check_count("max_train_samples", max_train_samples)
    _check_count("max_test_samples", max_test_samples)

    labels = arrays.train_labels.numpy()
    train_idx, val_idx = train_test_split(
        np.arange(n_train), test_size=val_size, stratify=labels, random_state=seed
    )
    if max_train_samples is not None:
        train_idx = train_idx[_stratified_subset(labels[train_idx], max_train_samples, seed)]
    test_idx = np.arange(len(arrays.test_labels))
    if max_test_samples is not None:
        test_idx = _stratified_subset(arrays.test_labels.numpy(), max_test_samples, seed)

    train_idx = torch.from_numpy(np.sort(train_idx)).long()
    val_idx = torch.from_numpy(np.sort(val_idx)).long()
    test_idx = torch.from_numpy(test_idx).long()
    return Splits(
        train_x=arrays.train_images[train_idx],
        train_y=arrays.train_labels[train_idx],
        val_x=arrays.train_images[val_idx],
        val_y=arrays.train_labels[val_idx],
        test_x=arrays.test_images[test_idx],
        test_y=arrays.test_labels[test_idx],
        train_index=train_idx,
        val_index=val_idx,
        test_index=test_idx,
    )
