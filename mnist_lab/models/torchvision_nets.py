"""VGG16 and AlexNet from torchvision, in two set-ups.

input_size=224 (transfer): ImageNetAdapter in front (resize, grey → 3 channels, ImageNet
    normalisation), the stock architecture, a new 10-class last layer.
input_size=32 (native): pad 28 → 32 and MNIST-normalise, a 1-channel first conv, the stock conv
    stack (AlexNet's first conv and pools made small enough that 32 px survive), a new pooling
    and a small classifier sized for the 32×32 feature map.
Either way `input_norm` (models/common.py) rescales each image first.

`ConvNetClassifier` keeps torchvision's attribute names (features, avgpool, classifier) and its
`prep` adapter holds no state, so its state dict has the same keys as torchvision's: the ImageNet
file, a torchvision state dict and a state dict of this model all load the same way.
"""

import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from mnist_lab.errors import ConfigError, WeightsError
from mnist_lab.models.common import (
    ImageNetAdapter,
    InputNorm,
    MnistNormalize,
    reads_pretrained_weights,
)
from mnist_lab.names import NUM_CLASSES


class ConvNetClassifier(nn.Module):
    """[B, 1, 28, 28] in [0, 1] → prep → features → avgpool → flatten → classifier → [B, 10]."""

    def __init__(
        self, prep: nn.Module, features: nn.Module, avgpool: nn.Module, classifier: nn.Module
    ) -> None:
        super().__init__()
        self.prep = prep
        self.features = features
        self.avgpool = avgpool
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.prep(x))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def _init_new(module: nn.Module) -> None:
    """He (fan_in) init for the layers we add: a ReLU follows all but the last."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _small_head(in_features: int, hidden: int, dropout: float) -> nn.Sequential:
    head = nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, NUM_CLASSES),
    )
    _init_new(head)
    return head


def _vgg16(input_size: int, dropout: float) -> tuple[ConvNetClassifier, tuple[str, ...]]:
    """The model and the state-dict key prefixes that are new (not expected in the weights)."""
    net = torchvision.models.vgg16(weights=None, dropout=dropout)
    if input_size == 224:
        net.classifier[6] = nn.Linear(4096, NUM_CLASSES)
        model = ConvNetClassifier(ImageNetAdapter(224), net.features, net.avgpool, net.classifier)
        return model, ("classifier.6.",)
    # Plain VGG16 has no BatchNorm; torchvision's He init (fan_out) keeps the 13 convs trainable.
    net.features[0] = nn.Conv2d(1, 64, kernel_size=3, padding=1)
    _init_new(net.features[0])
    prep = nn.Sequential(nn.ZeroPad2d(2), MnistNormalize())
    # Five 2×2 pools take 32 px to 1: the features are a 512-vector.
    model = ConvNetClassifier(prep, net.features, nn.Identity(), _small_head(512, 512, dropout))
    return model, ("classifier.",)


def _alexnet(input_size: int, dropout: float) -> tuple[ConvNetClassifier, tuple[str, ...]]:
    net = torchvision.models.alexnet(weights=None, dropout=dropout)
    if input_size == 224:
        net.classifier[6] = nn.Linear(4096, NUM_CLASSES)
        model = ConvNetClassifier(ImageNetAdapter(224), net.features, net.avgpool, net.classifier)
        return model, ("classifier.6.",)
    # An 11×11 stride-4 conv would leave 32 px at 7 before the first pool; 5×5 stride 1 keeps
    # 32 → pool 15 → pool 7 → pool 3 with the stock 3×3 stride-2 pools.
    net.features[0] = nn.Conv2d(1, 64, kernel_size=5, stride=1, padding=2)
    _init_new(net.features[0])
    prep = nn.Sequential(nn.ZeroPad2d(2), MnistNormalize())
    model = ConvNetClassifier(
        prep, net.features, nn.Identity(), _small_head(256 * 3 * 3, 512, dropout)
    )
    return model, ("classifier.", "features.0.")


def _cache_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urllib.parse.urlparse(url).path).name


def _imagenet_state_dict(weights: torchvision.models.WeightsEnum) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights through torch.hub's cache (downloads if absent)."""
    path = _cache_file(weights.url)
    existed = path.is_file()
    try:
        return weights.get_state_dict(progress=False, map_location="cpu", weights_only=True)
    except Exception as e:
        if existed:
            raise WeightsError(
                f"cannot read the cached ImageNet weights {path} ({type(e).__name__}: {e}); "
                f"delete the file, then download it again from {weights.url}"
            ) from e
        raise WeightsError(
            f"ImageNet weights {path.name} are not in the torch.hub cache and downloading them "
            f"failed ({type(e).__name__}: {e}). Download {weights.url} on a machine with "
            f"internet access and put it at {path} (the cache follows $TORCH_HOME), or pass "
            f"weights=<path to a .pt/.pth state dict>"
        ) from e


def _file_state_dict(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(
            f"weights file {path!r} not found; weights must be 'none', 'imagenet' or the path "
            f"to a .pt/.pth state dict"
        )
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"cannot load weights file {path} ({type(e).__name__}: {e}); "
            f"it must be a state dict saved with torch.save(model.state_dict(), path)"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(
            f"weights file {path} holds a {type(sd).__name__}, not a state dict "
            f"(a dict of parameter name → tensor, as model.state_dict() returns)"
        )
    return sd


def describe_mismatch(
    own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], ignore: tuple[str, ...] = ()
) -> str:
    """What keeps state dict `sd` from fitting a model whose state dict is `own` ("" if it fits):
    missing keys, unexpected keys, wrong shapes. Keys under the `ignore` prefixes don't count."""
    counted = [k for k in own if not k.startswith(ignore) and not k.endswith("num_batches_tracked")]
    given = [k for k in sd if not k.startswith(ignore) and not k.endswith("num_batches_tracked")]
    missing = [k for k in counted if k not in sd]
    unexpected = [k for k in given if k not in own]
    wrong = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in given
        if k in own and sd[k].shape != own[k].shape
    ]
    return "; ".join(
        f"{label} {', '.join(items[:5])}{' …' if len(items) > 5 else ''}"
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if items
    )


def _load_fitting(
    model: nn.Module, sd: dict[str, torch.Tensor], new: tuple[str, ...], source: str
) -> set[str]:
    """Load every tensor of `sd` that fits `model`; return the keys loaded.

    Keys under the `new` prefixes (the replaced classifier, AlexNet's native first conv) may be
    missing, extra or of another shape: they keep their fresh init. Anything else that does not
    fit is an error, since it means the file is for another architecture.
    """
    own = model.state_dict()
    own_in_channels = own["features.0.weight"].shape[1]
    sd = dict(sd)
    first = sd.get("features.0.weight")
    if first is not None and first.dim() == 4 and first.shape[1] == 3 and own_in_channels == 1:
        # Grey input x = R = G = B, so summing the RGB kernels gives the same response.
        sd["features.0.weight"] = first.sum(dim=1, keepdim=True)

    mismatch = describe_mismatch(own, sd, ignore=new)
    if mismatch:
        raise WeightsError(f"weights {source} do not fit this model: {mismatch}")
    fitting = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fitting, strict=False)
    skipped = sorted(k for k in own if k not in fitting and not k.startswith("classifier."))
    if skipped:
        warnings.warn(
            f"weights {source}: {', '.join(skipped)} do not fit this set-up and keep a fresh init",
            stacklevel=3,
        )
    return set(fitting)


def check_convnet(
    name: str, *, weights: str, freeze_features: bool, dropout: float, **_: object
) -> None:
    """`build_vgg16`'s and `build_alexnet`'s rules beyond the options' choices, without
    building: a ConfigError naming the first option broken."""
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"{name}: dropout must be in [0, 1), got {dropout}")
    if freeze_features and weights == "none":
        raise ConfigError(
            f"{name}: freeze_features=True with weights='none' would freeze a random conv stack; "
            f"use weights='imagenet' or a weights path, or set freeze_features=False"
        )


def _build(
    factory: Callable[[int, float], tuple[ConvNetClassifier, tuple[str, ...]]],
    imagenet: torchvision.models.WeightsEnum,
    weights: str,
    input_size: int,
    freeze_features: bool,
    dropout: float,
    input_norm: str,
) -> nn.Module:
    model, new = factory(input_size, dropout)
    if input_norm != "none":  # prep holds no weights: the state dict keys stay torchvision's
        model.prep = nn.Sequential(InputNorm(input_norm), model.prep)
    if weights == "none" or not reads_pretrained_weights():
        return model
    if weights == "imagenet":
        loaded = _load_fitting(model, _imagenet_state_dict(imagenet), new, imagenet.url)
    else:
        loaded = _load_fitting(model, _file_state_dict(weights), new, weights)
    if freeze_features:
        # Linear probing: pretrained convs stay fixed; a conv the weights did not fill trains.
        for name, p in model.features.named_parameters():
            p.requires_grad_(f"features.{name}" not in loaded)
    return model


def build_vgg16(
    *, weights: str, input_size: int, freeze_features: bool, dropout: float, input_norm: str
) -> nn.Module:
    """The `vgg16` model. weights: 'none' | 'imagenet' | path to a .pt/.pth state dict."""
    imagenet = torchvision.models.VGG16_Weights.IMAGENET1K_V1
    return _build(_vgg16, imagenet, weights, input_size, freeze_features, dropout, input_norm)


def build_alexnet(
    *, weights: str, input_size: int, freeze_features: bool, dropout: float, input_norm: str
) -> nn.Module:
    """The `alexnet` model. weights: 'none' | 'imagenet' | path to a .pt/.pth state dict."""
    imagenet = torchvision.models.AlexNet_Weights.IMAGENET1K_V1
    return _build(_alexnet, imagenet, weights, input_size, freeze_features, dropout, input_norm)
