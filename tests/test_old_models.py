"""Models logged before the package was grouped by concern, and before models were logged
without pickle, still load.

Those models are MLflow's pickled `pytorch` flavor, with a `python_function` flavor whose loader
is `mnist_lab.mlflow_model` (now `mnist_lab.tracking.pyfunc`). The test saves one the way the old
code did, without the copy of the package such models carried, so the loader must come from the
installed package. It runs in a fresh interpreter, as a user's would: a process that loaded a
model carrying its own copy of the package has that copy in `sys.modules` (MLflow swaps it in).
"""

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from pathlib import Path

import mlflow, mlflow.pyfunc, mlflow.pytorch, numpy as np, torch, yaml

from mnist_lab.models.build import build_model

folder = Path(sys.argv[1])
torch.manual_seed(0)
local = folder / "model"
mlflow.pytorch.save_model(
    build_model("cnn", depth=1, width=4), str(local), serialization_format="pickle",
    pip_requirements=["torch"],
)
conf = yaml.safe_load((local / "MLmodel").read_text())
pyfunc = conf["flavors"]["python_function"]
pyfunc["loader_module"] = "mnist_lab.mlflow_model"  # as models logged before the move say
(local / "MLmodel").write_text(yaml.safe_dump(conf))

frame = mlflow.pyfunc.load_model(str(local)).predict(np.zeros((3, 28, 28), dtype=np.float32))
assert list(frame.columns[:2]) == ["digit", "prob_0"] and len(frame) == 3, frame
assert np.allclose(frame.filter(like="prob_").sum(axis=1), 1.0, atol=1e-5)
assert mlflow.pytorch.load_model(str(local))(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
print("loaded")
"""


@pytest.mark.slow
def test_a_model_with_the_old_loader_path_loads_and_predicts(mlflow_store, tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "old")], capture_output=True, text=True
    )
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-3000:]
