"""Models logged before the package was grouped by concern still load.

Their `MLmodel` names the pyfunc loader `mnist_lab.mlflow_model` (now `mnist_lab.tracking.pyfunc`).
The test logs a model, rewrites its `MLmodel` the way the old code wrote it, and drops the copy
of the package the model carries, so the loader must come from the installed package.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml

from mnist_lab import tracking
from mnist_lab.models import build_model

OLD_LOADER = "mnist_lab.mlflow_model"


def old_style_model(folder: Path) -> Path:
    """A logged tiny CNN whose MLmodel points at the pre-move loader and carries no code."""
    torch.manual_seed(0)
    model = build_model("cnn", depth=1, width=4)
    with mlflow.start_run():
        uri = tracking.log_model(model, np.random.rand(2, 28, 28).astype(np.float32))
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(folder)))
    mlmodel = local / "MLmodel"
    conf = yaml.safe_load(mlmodel.read_text())
    pyfunc = conf["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mnist_lab.tracking.pyfunc"
    pyfunc["loader_module"] = OLD_LOADER
    pyfunc.pop("code", None)
    conf["flavors"]["pytorch"].pop("code", None)
    mlmodel.write_text(yaml.safe_dump(conf))
    shutil.rmtree(local / "code", ignore_errors=True)
    return local


LOAD_AND_PREDICT = """
import sys
import mlflow.pyfunc, mlflow.pytorch, numpy as np, torch
path = sys.argv[1]
frame = mlflow.pyfunc.load_model(path).predict(np.zeros((3, 28, 28), dtype=np.float32))
assert list(frame.columns[:2]) == ["digit", "prob_0"] and len(frame) == 3, frame
assert np.allclose(frame.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
assert mlflow.pytorch.load_model(path)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
print("loaded")
"""


def test_a_model_with_the_old_loader_path_loads_and_predicts(mlflow_store, tmp_path) -> None:
    """In a fresh interpreter, as a user's would be: one that loaded a model carrying its own
    copy of the package has that copy in sys.modules, not the installed one."""
    local = old_style_model(tmp_path / "old")
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(local)], capture_output=True, text=True
    )
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]
