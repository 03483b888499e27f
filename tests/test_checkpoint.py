"""Checkpoints are written whole or not at all, and read back without unpickling code."""

import pytest
import torch

from mnist_lab.engine.checkpoint import load_checkpoint, save_checkpoint
from mnist_lab.errors import LabError


def test_round_trip_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"epoch": 3, "model": {"w": torch.ones(2)}, "history": [{"a": 1.0}]}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for a lambda
        save_checkpoint({"epoch": 2, "bad": lambda: None}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(LabError, match="corrupt"):
        load_checkpoint(path)
    with pytest.raises(LabError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Payload:
    pass


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": Payload()}, path)
    with pytest.raises(LabError):
        load_checkpoint(path)
