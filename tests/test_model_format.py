"""Logged models hold weights (safetensors), a spec and the loader's code, no pickle: loading
rebuilds the module and runs no code but the code logged with it, checked by its sha256."""

import json
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import mnist_lab
from mnist_lab import tracking
from mnist_lab.errors import LabError, ModelFileError
from mnist_lab.inference import (
    FORMAT_VERSION,
    SPEC_FILE,
    WEIGHTS_FILE,
    load_module,
    save_weights,
)
from mnist_lab.models.build import ModelSpec, build_model
from mnist_lab.models.common import TemperatureScaled
from mnist_lab.tracking.pyfunc import code_files

DIGITS = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def pickles_in(folder: Path) -> list[str]:
    """Files under `folder` that hold a pickle: a pickle stream (protocol ≥ 2 starts with
    0x80) or a zip holding .pkl members (torch.save's format)."""
    found = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        head = path.read_bytes()[:2]
        if head[:1] == b"\x80" and head[1:2] and head[1] <= 5:
            found.append(str(path))
        elif zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith(".pkl") for n in z.namelist()):
                    found.append(str(path))
    return found


def test_a_logged_model_holds_no_pickle_and_serves_the_same_probabilities(mlflow_store, tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("cnn", {"depth": 2, "width": 4}, temperature_scaled=True)
    model = TemperatureScaled(build_model("cnn", depth=2, width=4), 1.7).eval()
    with tracking.run():
        uri = tracking.log_model(model, DIGITS[:, 0].numpy(), spec)
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "dl")))
    assert pickles_in(local) == []
    mlmodel = (local / "MLmodel").read_text()
    assert "pytorch" not in mlmodel and "cloudpickle" not in mlmodel
    # The loader and what it imports travel with it; nothing of training, tracking or tuning.
    carried = sorted(p.relative_to(local / "code").as_posix() for p in local.rglob("code/**/*.py"))
    assert carried == code_files()
    assert not {"engine", "tracking", "tuning", "analysis"} & {Path(p).parts[1] for p in carried}

    pyfunc = mlflow.pyfunc.load_model(uri)
    answer = pyfunc.predict(DIGITS[:, 0].numpy())
    with torch.no_grad():
        expected = model(DIGITS).softmax(1).numpy()
    np.testing.assert_allclose(answer.filter(like="prob_").to_numpy(), expected, rtol=1e-5)
    module = pyfunc.get_raw_model()
    assert isinstance(module, TemperatureScaled) and float(module.temperature) == pytest.approx(1.7)


def _weights_file(tmp_path: Path, module: torch.nn.Module) -> str:
    path = tmp_path / "pretrained.pt"
    torch.save(module.state_dict(), path)
    return str(path)


@pytest.mark.parametrize(
    ("name", "options", "part"),
    [
        ("vit", {"depth": 1, "dim": 32, "heads": 2}, ""),
        ("timm:resnet18", {}, ""),
        ("alexnet", {"input_size": 32}, ""),
        ("faster_rcnn", {}, "detector"),
        ("faster_rcnn", {}, ""),
    ],
)
def test_every_kind_of_module_round_trips(tmp_path, name, options, part):
    torch.manual_seed(0)
    spec = ModelSpec(name, options, part=part)
    module = spec.build().eval()
    save_weights(module, spec, tmp_path / "m")
    _, loaded = load_module(tmp_path / "m")
    trained, rebuilt = module.state_dict(), loaded.state_dict()
    assert list(trained) == list(rebuilt)
    for key, tensor in trained.items():
        assert torch.equal(tensor, rebuilt[key]), key
    if not part:
        with torch.no_grad():
            torch.testing.assert_close(loaded(DIGITS), module(DIGITS))


def test_a_model_trained_from_pretrained_weights_loads_without_them(tmp_path):
    """The spec names the weights it started from; loading must not read them (they may be a
    file on another machine, or ImageNet behind no internet): the structure they imply (frozen
    BatchNorm in a pretrained mobilenet backbone) is rebuilt and the trained tensors fill it."""
    import torchvision

    net = torchvision.models.mobilenet_v3_large(weights=None)
    pretrained = _weights_file(tmp_path, net)
    options = {"backbone": "mobilenet_v3", "weights_backbone": pretrained}
    spec = ModelSpec("faster_rcnn", options)
    torch.manual_seed(0)
    module = build_model("faster_rcnn", **options).eval()
    save_weights(module, spec, tmp_path / "m")
    Path(pretrained).unlink()
    _, loaded = load_module(tmp_path / "m")
    assert loaded.state_dict().keys() == module.state_dict().keys()

    vgg = ModelSpec("vgg16", {"input_size": 32, "weights": pretrained, "freeze_features": True})
    with pytest.raises(Exception, match=r"pretrained\.pt"):  # training would read it
        build_model(vgg.model, **vgg.options)
    vgg.build()  # rebuilding does not


def test_a_changed_weights_file_is_refused_naming_it(tmp_path):
    spec = ModelSpec("cnn", {"depth": 1, "width": 2})
    save_weights(spec.build(), spec, tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=rf"(?s){WEIGHTS_FILE}.*sha256.*log the model again"):
        load_module(tmp_path / "m")


def test_weights_that_do_not_fit_the_spec_are_refused_naming_the_file(tmp_path):
    spec = ModelSpec("cnn", {"depth": 1, "width": 2})
    save_weights(spec.build(), spec, tmp_path / "m")
    wider = ModelSpec("cnn", {"depth": 1, "width": 3})
    save_weights(wider.build(), spec, tmp_path / "other")  # weights of another shape
    with pytest.raises(ModelFileError, match=rf"{WEIGHTS_FILE} does not fit the 'cnn' model"):
        load_module(tmp_path / "other")


def test_the_format_version_is_written(mlflow_store, tmp_path):
    _, folder = _logged(tmp_path)
    record = json.loads((folder / "data" / "mnist_lab_model" / SPEC_FILE).read_text())
    assert record["format_version"] == FORMAT_VERSION == 1
    assert record["mnist_lab_version"] == mnist_lab.__version__


@pytest.mark.parametrize("version", [2, None, "1", True])
def test_an_unknown_format_version_is_refused_naming_it_and_the_fix(
    mlflow_store, tmp_path, version
):
    """Through mnist-lab (before MLflow loads anything), through MLflow alone, and rebuilding
    the module: the message names the version found, the ones read, and the release to use."""
    uri, folder = _logged(tmp_path)
    data = folder / "data" / "mnist_lab_model"
    record = json.loads((data / SPEC_FILE).read_text())
    record["format_version"] = version
    record["mnist_lab_version"] = "9.9.9"
    (data / SPEC_FILE).write_text(json.dumps(record))
    message = rf"(?s)format version {version!r}.* reads version 1\. .*release .*\(9\.9\.9\)"
    with pytest.raises(ModelFileError, match=message):
        tracking.load_model(uri)
    with pytest.raises(ModelFileError, match=message):
        mlflow.pyfunc.load_model(uri)
    with pytest.raises(ModelFileError, match=message):
        load_module(data)


def test_the_pickle_check_finds_pickles(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    (tmp_path / "b.pkl").write_bytes(__import__("pickle").dumps([1, 2]))
    assert sorted(Path(p).name for p in pickles_in(tmp_path)) == ["a.pt", "b.pkl"]


def test_loading_skips_random_init_and_puts_it_back():
    """Rebuilding for a load skips torch.nn.init (every tensor is overwritten next), and only
    while it builds: a model built afterwards is initialised as usual."""
    kaiming = torch.nn.init.kaiming_uniform_
    ModelSpec("cnn", {"depth": 1, "width": 2}).build(init=False)
    assert torch.nn.init.kaiming_uniform_ is kaiming
    torch.manual_seed(0)
    a = ModelSpec("cnn", {"depth": 1, "width": 2}).build()
    torch.manual_seed(0)
    b = build_model("cnn", depth=1, width=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def _logged(tmp_path: Path) -> tuple[str, Path]:
    """A logged model's URI and its folder in the (local) artifact store."""
    spec = ModelSpec("cnn", {"depth": 1, "width": 2})
    with tracking.run():
        uri = tracking.log_model(spec.build(), DIGITS[:, 0].numpy(), spec)
    model_id = uri.removeprefix("models:/")
    location = mlflow.get_logged_model(model_id).artifact_location
    return uri, Path(location.removeprefix("file://"))


def test_a_model_whose_mlmodel_names_other_code_is_refused(mlflow_store, tmp_path):
    import yaml

    uri, folder = _logged(tmp_path)
    tracking.load_model(uri)  # as logged: fine
    mlmodel = folder / "MLmodel"
    conf = yaml.safe_load(mlmodel.read_text())
    conf["flavors"]["python_function"]["loader_module"] = "evil_module"
    mlmodel.write_text(yaml.safe_dump(conf))
    with pytest.raises(ModelFileError, match=r"loader .evil_module.*refused"):
        tracking.load_model(uri)


def test_changed_code_is_refused_before_and_when_it_loads(mlflow_store, tmp_path):
    """The code folder MLflow puts on sys.path is checked against spec.json before MLflow loads
    the model (tracking.load_model), and by the loader itself wherever it loads; a file added
    beside the package (which would shadow a module on sys.path) counts as a change."""
    uri, folder = _logged(tmp_path)
    extra = folder / "code" / "numpy.py"
    extra.write_text("raise SystemExit('not numpy')\n")
    with pytest.raises(ModelFileError, match=r"model's code is not the code logged"):
        tracking.load_model(uri)
    extra.unlink()
    names_py = folder / "code" / "mnist_lab" / "names.py"
    names_py.write_text(names_py.read_text() + "\nINJECTED = True\n")
    with pytest.raises(ModelFileError, match=r"model's code is not the code logged"):
        tracking.load_model(uri)
    with pytest.raises(ModelFileError, match=r"model's code is not the code logged"):
        mlflow.pyfunc.load_model(uri)  # MLflow alone: the loader checks it too


def test_code_swapped_with_its_spec_is_caught_by_the_runs_record(mlflow_store, tmp_path):
    from mnist_lab.inference import code_sha256

    uri, folder = _logged(tmp_path)
    names_py = folder / "code" / "mnist_lab" / "names.py"
    names_py.write_text(names_py.read_text() + "\nINJECTED = True\n")
    spec_file = folder / "data" / "mnist_lab_model" / SPEC_FILE
    record = json.loads(spec_file.read_text())
    record["code_sha256"] = code_sha256(folder / "code")
    spec_file.write_text(json.dumps(record))
    with pytest.raises(LabError, match=r"its code .* not the ones run .* logged"):
        tracking.load_model(uri)


def test_weights_swapped_with_their_spec_are_caught_by_the_runs_record(mlflow_store, tmp_path):
    """Whoever can write artifacts can replace weights.safetensors and the sha256 in spec.json
    together; the run's tag, written when the model was logged, still tells."""
    uri, folder = _logged(tmp_path)
    data = folder / "data" / "mnist_lab_model"
    code = json.loads((data / SPEC_FILE).read_text())["code_sha256"]
    other = ModelSpec("cnn", {"depth": 1, "width": 2})
    torch.manual_seed(1)
    save_weights(other.build(), other, data, code)  # new weights and a matching spec.json
    with pytest.raises(LabError, match=r"not the ones run .* logged"):
        tracking.load_model(uri)


def test_a_pickled_model_is_refused(tmp_path):
    pickled = tmp_path / "pickled"
    mlflow.pytorch.save_model(
        build_model("cnn", depth=1, width=2),
        str(pickled),
        serialization_format="pickle",
        pip_requirements=["torch"],  # stated: MLflow would infer them in a child process
    )
    with pytest.raises(ModelFileError, match=r"other flavors \['pytorch'\].*refused"):
        tracking.load_model(str(pickled))
