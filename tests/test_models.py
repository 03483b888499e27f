"""Model registry, shapes, options and weights loading. No network, no MNIST files."""

import inspect
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from mnist_lab.errors import ConfigError, WeightsError
from mnist_lab.models import ARCHITECTURES, TIMM, model_names, model_options
from mnist_lab.models.build import build_model
from mnist_lab.models.vit import attention

VGG16_FILE = "vgg16-397923af.pth"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def digits(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, 28, 28)


def forward_backward(model: torch.nn.Module, batch: int = 2) -> None:
    model.train()
    out = model(digits(batch))
    assert out.shape == (batch, 10)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def fake_weights(stock: torch.nn.Module, path: Path) -> dict[str, float]:
    """Save a state dict with `stock`'s keys and shapes, each tensor one constant (tiny file).

    Stride-0 views of a scalar keep the file a few KB even for VGG16's 138 M parameters.
    """
    values = {k: float(i + 1) for i, k in enumerate(stock.state_dict())}
    sd = {k: torch.tensor(values[k]).expand(v.shape) for k, v in stock.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return values


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME; any download attempt fails as it would offline."""

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


# Registry


def test_names_and_options() -> None:
    names = model_names()
    for name in ("cnn", "vgg16", "alexnet", "vit", "timm_vit"):
        assert name in names and name in ARCHITECTURES
    assert "timm:<name>" in names
    assert list(model_options("cnn")) == [
        "depth",
        "width",
        "dropout",
        "input_norm",
        "pool",
        "convs",
    ]
    classifiers = [n for n, entry in ARCHITECTURES.items() if entry.task == "classifier"]
    assert all("input_norm" in model_options(name) for name in classifiers)
    assert set(model_options("vgg16")) == {
        *("weights", "input_size", "freeze_features", "dropout", "input_norm")
    }
    assert model_options("vit") == model_options("timm_vit")
    assert model_options("timm:resnet18") == {"drop_path": 0.0}  # stochastic depth, any timm


@pytest.mark.parametrize("entry", [*ARCHITECTURES.values(), TIMM], ids=lambda e: e.name)
def test_each_builder_takes_its_entrys_options_keyword_only_without_defaults(entry) -> None:
    """The table states the defaults, once: a builder's keyword-only parameters are its entry's
    options and none has a default of its own; its check takes them all too."""
    params = inspect.signature(entry.build_function()).parameters.values()
    keyword_only = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert [p.name for p in keyword_only] == list(entry.options)
    assert all(p.default is inspect.Parameter.empty for p in keyword_only)
    entry.check_function()(entry.name, **entry.defaults())  # the defaults pass their check


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'.*cnn.*vit.*timm:<name>"):
        build_model("resnet")
    with pytest.raises(ConfigError, match="unknown model"):
        model_options("resnet")


def test_unknown_option_names_it_and_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"'widht'.*valid options: depth, width, dropout"):
        build_model("cnn", widht=8)
    with pytest.raises(ConfigError, match="'depth'"):
        build_model("timm:resnet18", depth=3)


def test_unknown_timm_model() -> None:
    with pytest.raises(ConfigError, match="unknown timm model 'no_such_net'"):
        build_model("timm:no_such_net")


# Shapes


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_cnn(depth: int) -> None:
    forward_backward(build_model("cnn", depth=depth, width=8))


@pytest.mark.parametrize("input_norm", ["none", "minmax", "tophat"])
@pytest.mark.parametrize("pool", ["flatten", "avg"])
def test_cnn_input_norm_and_pool(input_norm: str, pool: str) -> None:
    forward_backward(build_model("cnn", width=8, input_norm=input_norm, pool=pool))


def test_cnn_input_norm_undoes_brightness_and_adds_no_weights() -> None:
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 8:20, 12:15] = torch.rand(3, 1, 12, 3) * 0.5 + 0.5
    plain = build_model("cnn", width=8).eval()
    for mode in ("minmax", "tophat"):
        new = build_model("cnn", width=8, input_norm=mode).eval()
        new.load_state_dict(plain.state_dict())  # no weights of its own
        stretched = new.input_norm(x)
        assert torch.allclose(new.input_norm(0.5 + 0.5 * x), stretched, atol=1e-5)
        assert stretched.amin() == 0 and torch.allclose(stretched.amax((1, 2, 3)), torch.ones(3))
    assert torch.equal(plain.input_norm(x), x)


SMALL = {
    "cnn": {"width": 8},
    "vgg16": {},
    "alexnet": {},
    "vit": {"dim": 32, "depth": 1},
    "timm_vit": {"dim": 32, "depth": 1},
}


@pytest.mark.parametrize("name", list(SMALL))
def test_every_classifier_takes_input_norm_without_new_weights(name: str) -> None:
    """tophat in front: a brightened digit gives the same logits, and the state dict is the
    plain model's (a checkpoint trained with one input_norm loads into the other)."""
    torch.manual_seed(0)
    plain = build_model(name, **SMALL[name]).eval()
    normed = build_model(name, input_norm="tophat", **SMALL[name]).eval()
    assert list(normed.state_dict()) == list(plain.state_dict())
    normed.load_state_dict(plain.state_dict())
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 0.6 + 0.4 * torch.rand(2, 1, 16, 4)
    with torch.no_grad():
        assert torch.allclose(normed(0.4 + 0.6 * x), normed(x), atol=1e-4)
        assert not torch.allclose(plain(0.4 + 0.6 * x), plain(x), atol=1e-2)
    with pytest.raises(ConfigError, match=rf"{name}: input_norm must be one of"):
        build_model(name, input_norm="zscore", **SMALL[name])


@pytest.mark.parametrize(("option", "value"), [("input_norm", "zscore"), ("pool", "max")])
def test_cnn_bad_option_values_name_valid_ones(option: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"{option} must be one of .*, got '{value}'"):
        build_model("cnn", **{option: value})


def test_cnn_bad_depth() -> None:
    with pytest.raises(ConfigError, match="depth"):
        build_model("cnn", depth=5)
    with pytest.raises(ConfigError, match="convs"):
        build_model("cnn", convs=0)


def test_cnn_convs_adds_full_resolution_layers_and_convs_1_is_the_old_model() -> None:
    old_keys = list(build_model("cnn").state_dict())
    assert old_keys[0] == "features.0.0.weight" and "features.0.2.running_mean" in old_keys
    model = build_model("cnn", convs=2, width=8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        *((1, 8), (8, 8), (8, 16), (16, 16), (16, 32), (32, 32))
    ]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("name", ["vit", "timm_vit"])
@pytest.mark.parametrize("patch_size", [4, 7, 14])
def test_vit(name: str, patch_size: int) -> None:
    forward_backward(build_model(name, patch_size=patch_size, dim=32, depth=2, heads=4))


def test_vit_attention_runs_in_fp32_under_cpu_autocast(monkeypatch) -> None:
    """bf16 flash-attention backward is slow on CPU: attend in fp32, hand back bf16."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    seen = []

    def recording_sdpa(q, k, v, **kwargs):
        seen.append(q.dtype)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    q, k, v = torch.randn(3, 2, 4, 17, 8).unbind(0)
    expected = sdpa(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), dropout_p=0.0)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)


def test_vit_matches_timm_parameter_count() -> None:
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(build_model("vit")) == count(build_model("timm_vit"))


@pytest.mark.parametrize("name", ["vit", "timm_vit"])
def test_vit_bad_options(name: str) -> None:
    with pytest.raises(ConfigError, match="patch_size"):
        build_model(name, patch_size=5)
    with pytest.raises(ConfigError, match=r"dim \(66\).*heads \(4\)"):
        build_model(name, dim=66, heads=4)


def test_timm_any_model() -> None:
    forward_backward(build_model("timm:resnet18"))


@pytest.mark.parametrize("name", ["vit", "timm_vit", "timm:resnet18"])
def test_drop_path_is_stochastic_depth_in_training_only(name: str) -> None:
    """drop_path (tuned by tuning/timm*.yaml): random per sample in training, the identity in
    eval, no weights of its own (a checkpoint loads at any drop_path)."""
    options = {"dim": 32, "depth": 4, "heads": 4} if "vit" in name else {}
    torch.manual_seed(0)
    plain = build_model(name, **options)
    torch.manual_seed(0)
    dropped = build_model(name, **options, drop_path=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()
    dropped.load_state_dict(plain.state_dict())
    x = torch.rand(8, 1, 28, 28)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped(x), plain(x))
    drop_paths = [m for m in dropped.modules() if type(m).__name__ == "DropPath"]
    assert drop_paths and max(getattr(m, "p", getattr(m, "drop_prob", 0)) for m in drop_paths) > 0
    if "vit" in name:  # (a fresh ResNet's residual branches are zero: nothing to drop yet)
        dropped.train()
        torch.manual_seed(1)
        first = dropped(x)
        assert not torch.allclose(first, dropped(x))  # a different draw each step
    forward_backward(build_model(name, **options, drop_path=0.1))
    with pytest.raises(ConfigError, match=r"drop_path must be in \[0, 1\), got 1.0"):
        build_model(name, **options, drop_path=1.0)


@pytest.mark.parametrize("name", ["vgg16", "alexnet"])
def test_torchvision_native(name: str) -> None:
    forward_backward(build_model(name, input_size=32))


@pytest.mark.parametrize("name", ["vgg16", "alexnet"])
def test_torchvision_transfer_forward(name: str) -> None:
    model = build_model(name, input_size=224).eval()
    with torch.no_grad():
        assert model(digits(1)).shape == (1, 10)


def test_torchvision_bad_options() -> None:
    with pytest.raises(ConfigError, match="input_size"):
        build_model("vgg16", input_size=64)
    with pytest.raises(ConfigError, match="freeze_features"):
        build_model("alexnet", freeze_features=True)


# Weights


def test_imagenet_weights_from_hub_cache(torch_home: Path) -> None:
    file = torch_home / "hub" / "checkpoints" / VGG16_FILE
    values = fake_weights(torchvision.models.vgg16(), file)

    transfer = build_model("vgg16", input_size=224, weights="imagenet", freeze_features=True)
    assert transfer.features[0].weight.eq(values["features.0.weight"]).all()
    assert transfer.classifier[0].weight.eq(values["classifier.0.weight"]).all()
    assert transfer.classifier[6].out_features == 10
    assert not any(p.requires_grad for p in transfer.features.parameters())
    assert all(p.requires_grad for p in transfer.classifier.parameters())

    native = build_model("vgg16", input_size=32, weights="imagenet")
    # RGB kernels summed into one grey channel.
    assert native.features[0].weight.shape == (64, 1, 3, 3)
    assert native.features[0].weight.eq(3 * values["features.0.weight"]).all()
    assert native.features[28].weight.eq(values["features.28.weight"]).all()
    assert native(digits()).shape == (2, 10)  # constant fake weights: values are meaningless


def test_alexnet_native_imagenet_keeps_new_first_conv_trainable(torch_home: Path) -> None:
    fake_weights(torchvision.models.alexnet(), torch_home / "hub" / "checkpoints" / ALEXNET_FILE)
    with pytest.warns(UserWarning, match=r"features\.0\.weight"):
        model = build_model("alexnet", weights="imagenet", freeze_features=True)
    assert model.features[0].weight.requires_grad
    assert not model.features[3].weight.requires_grad
    assert model(digits()).shape == (2, 10)


def test_imagenet_weights_missing_names_file_path_and_url(torch_home: Path) -> None:
    with pytest.raises(WeightsError) as info:
        build_model("vgg16", weights="imagenet")
    message = str(info.value)
    assert VGG16_FILE in message
    assert str(torch_home / "hub" / "checkpoints" / VGG16_FILE) in message
    assert torchvision.models.VGG16_Weights.IMAGENET1K_V1.url in message


def test_weights_path_roundtrip(tmp_path: Path) -> None:
    trained = build_model("alexnet")
    path = tmp_path / "alexnet.pt"
    torch.save(trained.state_dict(), path)
    loaded = build_model("alexnet", weights=str(path))
    for k, v in trained.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_weights_path_missing(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"nope\.pt.*not found"):
        build_model("vgg16", weights=str(tmp_path / "nope.pt"))


def test_weights_path_wrong_shape(tmp_path: Path) -> None:
    sd = build_model("alexnet").state_dict()
    sd["features.3.weight"] = torch.zeros(8, 8, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"bad\.pt.*features\.3\.weight"):
        build_model("alexnet", weights=str(path))


def test_weights_path_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="not a state dict"):
        build_model("vgg16", weights=str(path))
