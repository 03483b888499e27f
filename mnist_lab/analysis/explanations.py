"""Where a classifier looks: HiResCAM for convolutional nets, attention rollout for ViTs.

`heatmaps` returns one map per digit, [B, 28, 28] in [0, 1] (min-max per image, as the
Grad-CAM reference implementations scale them), on the CPU:

- HiResCAM (Draelos & Carin 2020), Grad-CAM's faithful variant, via captum's
  `LayerGradientXActivation` for models with convolutions (cnn, vgg16, alexnet, timm CNNs such
  as timm:resnet18): the target class's gradient times the last convolutional feature map,
  position by position, summed over channels, ReLU'd and upsampled bilinearly to 28×28.
  `grad_cam_layer` says which layer. Grad-CAM proper averages the gradient over positions
  first; for a head that reads positions separately (our cnn's flatten, VGG's and AlexNet's
  classifier) those weights cancel: on our trained default CNNs it drew an all-zero map for
  most test digits and was rarely hotter on the ink than off it, where HiResCAM on the same
  layer was never all zero and hotter on the ink.
- Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") for
  our `vit` and timm's VisionTransformer (`timm_vit`): per layer, average the heads, add the
  identity for the residual path and renormalise the rows; multiply the layers together; the
  CLS token's row over the patch tokens, on the patch grid, upsampled. Rollout is
  class-agnostic: it shows what the CLS token gathered, not evidence for one class.

Both attention modules run F.scaled_dot_product_attention, which returns no weights, so on the
explain path only forward hooks recompute softmax(q kᵀ · scale) from each module's input. The
model code is untouched and training pays nothing.

`explanation_examples` picks the digits worth showing and `explanations_figure` draws them.
"""

import contextlib
import math
import sys
from collections.abc import Iterator, Sequence

import torch
from captum.attr import LayerAttribution, LayerGradientXActivation
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch import Tensor, nn

from mnist_lab.analysis.run_figures import CAPTION_ROOM, mosaic_figure
from mnist_lab.errors import LabError
from mnist_lab.models.vit import Attention as LabAttention
from mnist_lab.models.vit import ViT
from mnist_lab.names import IMAGE_SIZE

HIRESCAM = "hirescam"
ATTENTION_ROLLOUT = "attention-rollout"
METHOD_TITLES = {HIRESCAM: "HiResCAM", ATTENTION_ROLLOUT: "Attention rollout"}  # for figures
# Modules taken as "the activation after the last convolution" by `grad_cam_layer`.
ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
)
HEAT_CMAP = "jet"
HEAT_ALPHA = 0.45


# ---------------------------------------------------------------------------- which method


def _timm_module(name: str) -> object | None:
    """timm's module `name` if timm is already imported, else None.

    A timm model cannot exist before timm is imported, and importing it takes seconds, so the
    checks below never import it themselves.
    """
    return sys.modules.get(name)


def _find_vit(model: nn.Module) -> nn.Module | None:
    """The ViT inside `model` (ours, or timm's VisionTransformer), or None."""
    classes: tuple[type, ...] = (ViT,)
    timm_vit = _timm_module("timm.models.vision_transformer")
    if timm_vit is not None:
        classes += (timm_vit.VisionTransformer,)
    return next((m for m in model.modules() if isinstance(m, classes)), None)


def _describe(model: nn.Module) -> str:
    """'ViT', or 'Sequential(MnistNormalize, ResNet)' for the wrappers build_model makes."""
    name = type(model).__name__
    if isinstance(model, nn.Sequential):
        return f"{name}({', '.join(type(m).__name__ for m in model)})"
    return name


def _holds_a_detector(model: nn.Module) -> bool:
    """Whether `model` holds a module that says it cannot be explained (faster_rcnn's
    DetectorClassifier: `explainable = False`), without importing faster_rcnn and torchvision
    (~1.5 s) in every run that draws heatmaps."""
    return any(getattr(m, "explainable", True) is False for m in model.modules())


def method_name(model: nn.Module) -> str:
    """The method `heatmaps` uses for `model`: "attention-rollout" for our ViT or timm's
    VisionTransformer, "hirescam" for a model with an nn.Conv2d; anything else (and the
    Faster R-CNN detector) is a LabError naming the model's type."""
    if _holds_a_detector(model):
        raise LabError(
            f"cannot explain a {_describe(model)}: faster_rcnn classifies through box detection, "
            "which neither a CAM nor attention rollout follows; explain a classifier "
            "(cnn, vgg16, alexnet, vit, timm_vit or timm:<name>)"
        )
    if _find_vit(model) is not None:
        return ATTENTION_ROLLOUT
    if any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return HIRESCAM
    raise LabError(
        f"cannot explain a {_describe(model)}: it has no nn.Conv2d for HiResCAM and is not a "
        "ViT (mnist_lab's ViT or timm's VisionTransformer) for attention rollout"
    )


# ------------------------------------------------------------------------------- heat maps


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; afterwards every submodule gets back its own training flag (a frozen
    BatchNorm kept in eval inside a training model stays so)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def heatmaps(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Relevance maps [B, 28, 28] in [0, 1] (CPU float32) for digits [B, 1, 28, 28] in [0, 1].

    targets: [B] class indices: HiResCAM explains that class's logit (pass the predictions to
    explain what the model chose); attention rollout ignores them. The model runs in eval mode
    on its own device and gets its training flags back; no parameter's .grad is touched.
    """
    method = method_name(model)
    device = _device(model)
    images = images.to(device, torch.float32)
    with _eval_mode(model):
        if method == HIRESCAM:
            maps = _grad_cam(model, images, targets.to(device))
        else:
            maps = _rollout(model, images)
    return _normalise(maps.detach().float().cpu())


def _normalise(maps: Tensor) -> Tensor:
    """Min-max per map: [B, H, W] → [0, 1]; a constant map becomes all zeros."""
    flat = maps.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1) - low).clamp_min(1e-12)
    return (maps - low) / span


def _upsample(grid: Tensor) -> Tensor:
    """[B, 1, h, w] → [B, 28, 28], bilinear (cell centres stay at their image positions)."""
    size = (IMAGE_SIZE, IMAGE_SIZE)
    return LayerAttribution.interpolate(grid, size, interpolate_mode="bilinear")[:, 0]


# --------------------------------------------------------------------------------- HiResCAM


def _is_spatial(shape: torch.Size) -> bool:
    """A 4-D map [B, C, H, W] with more than one position: something a CAM can localise."""
    return len(shape) == 4 and shape[2] * shape[3] > 1


def _leaf_calls(model: nn.Module, example: Tensor) -> list[tuple[str, nn.Module, torch.Size]]:
    """(name, module, output shape) of every leaf module in the order a forward pass calls them.

    Execution order, not registration order: timm's BasicBlock registers its shortcut conv
    after the activation that ends the block, but runs it before.
    """
    calls: list[tuple[str, nn.Module, torch.Size]] = []
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:

            def record(m: nn.Module, args: object, out: object, name: str = name) -> None:
                if isinstance(out, Tensor):
                    calls.append((name, m, out.shape))

            handles.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _grad_cam_target(model: nn.Module) -> tuple[str, nn.Module]:
    """The (name, module) whose output HiResCAM weighs; see `grad_cam_layer`. Eval mode."""
    example = torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=_device(model))
    calls = _leaf_calls(model, example)
    convs = [i for i, (_, m, shape) in enumerate(calls) if isinstance(m, nn.Conv2d)]
    spatial = [i for i in convs if _is_spatial(calls[i][2])]
    if not spatial:
        raise LabError(
            f"cannot run HiResCAM on a {_describe(model)}: none of its {len(convs)} nn.Conv2d "
            "layers outputs a map larger than 1×1 for a 28×28 digit"
        )
    last = spatial[-1]
    conv_shape = calls[last][2]
    for name, module, shape in calls[last + 1 :]:
        if shape != conv_shape:  # a pool, a stride or the head: past the conv's own map
            break
        if isinstance(module, ACTIVATIONS):
            return name, module
    name, module, _ = calls[last]
    return name, module


def grad_cam_layer(model: nn.Module) -> str:
    """The qualified name of the module whose output HiResCAM explains, e.g. 'features.29'.

    The last nn.Conv2d (in forward order) whose output is larger than 1×1, taken after its
    activation when one follows with the same output shape before anything else changes the
    shape; otherwise the conv itself. So: VGG16 and AlexNet, the ReLU after the last conv; a
    timm ResNet, its last block's output (the ReLU after the residual add, the layer usually
    explained for ResNets); our cnn, the last conv (7×7 at depth 3).

    Why the activation: Grad-CAM weighs the maps the rest of the net reads, the rectified maps
    of the paper (its VGG conv5_3 is post-ReLU). Why not past a pool: Grad-CAM weighs each
    channel by the spatial mean of its gradient, and wants the finest class-specific map. Our
    cnn's block is conv → maxpool → BN → ReLU, so its ReLU'd output is 3×3 and feeds a flatten
    head whose position-specific weights largely cancel in that mean: on that 3×3 output a
    briefly trained cnn's Grad-CAM was often all zero and mostly hotter off the ink than on
    it, on the 7×7 conv output never all zero and mostly hotter on the ink. Layers that reach
    1×1 are skipped, as a single
    cell localises nothing (timm:resnet18 is 1×1 after layer4 at 28 px, so layer3 is used).
    """
    with _eval_mode(model):
        return _grad_cam_target(model)[0]


def _grad_cam(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """HiResCAM maps [B, 28, 28] ≥ 0 (not yet normalised); eval mode is the caller's."""
    _, layer = _grad_cam_target(model)
    with torch.enable_grad():  # callers often evaluate under torch.no_grad()
        products = LayerGradientXActivation(model, layer).attribute(images, target=targets)
    return _upsample(products.sum(1, keepdim=True).clamp(min=0))  # [B, 1, h, w] → [B, 28, 28]


# ------------------------------------------------------------------------ attention rollout


def _lab_attention(module: LabAttention, x: Tensor) -> Tensor:
    """Our Attention's weights [B, heads, N, N] for its input x [B, N, D] (as its forward)."""
    b, n, d = x.shape
    qkv = module.qkv(x).view(b, n, 3, module.heads, d // module.heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    return (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(dim=-1)  # SDPA's scale


def _timm_attention(module: nn.Module, x: Tensor, kwargs: dict[str, object]) -> Tensor:
    """timm's Attention weights [B, heads, N, N] for its input x [B, N, D] (as its forward)."""
    b, n, _ = x.shape
    qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k = module.q_norm(qkv[0]), module.k_norm(qkv[1])
    scores = (q * module.scale) @ k.transpose(-2, -1)
    mask = kwargs.get("attn_mask")
    return _masked(scores, mask, bool(kwargs.get("is_causal", False))).softmax(dim=-1)


def _masked(scores: Tensor, mask: Tensor | None, is_causal: bool) -> Tensor:
    """Attention scores [B, heads, N, N] with a mask applied as scaled_dot_product_attention
    reads it: `is_causal` hides later tokens (and wins over `mask`); a bool mask keeps where
    True; any other mask is added."""
    n = scores.shape[-1]
    if is_causal:
        later = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
        return scores.masked_fill(later, float("-inf"))
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


def _attention_modules(vit: nn.Module) -> list[nn.Module]:
    """The self-attention modules of `vit` in layer order; a LabError for kinds not supported."""
    kinds: tuple[type, ...] = (LabAttention,)
    timm_attention = _timm_module("timm.layers.attention")
    if timm_attention is not None:
        kinds += (timm_attention.Attention,)
    found = [m for m in vit.modules() if isinstance(m, kinds)]
    if len(found) != len(vit.blocks):
        kinds_seen = sorted({type(getattr(b, "attn", b)).__name__ for b in vit.blocks})
        raise LabError(
            f"attention rollout needs mnist_lab's or timm's standard Attention in every block; "
            f"this {type(vit).__name__} has {', '.join(kinds_seen)}"
        )
    return found


def _attention_maps(model: nn.Module, vit: nn.Module, images: Tensor) -> list[Tensor]:
    """Each layer's attention weights [B, heads, N, N], first layer first, from one forward."""
    weights: list[Tensor] = []

    def record(module: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
        x = args[0] if args else kwargs["x"]
        if isinstance(module, LabAttention):
            weights.append(_lab_attention(module, x))
        else:
            weights.append(_timm_attention(module, x, kwargs))

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in _attention_modules(vit)]
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return weights


def _readout_row(rollout: Tensor, vit: nn.Module) -> Tensor:
    """[B, N, N] rollout → [B, P]: how much of what the head reads came from each patch.

    That is the CLS token's row over the patch tokens; for a timm ViT without a CLS token (its
    head pools the tokens) the patch rows' mean.
    """
    if isinstance(vit, ViT):
        return rollout[:, 0, 1:]
    prefix = vit.num_prefix_tokens
    if vit.cls_token is not None:
        return rollout[:, 0, prefix:]
    return rollout[:, prefix:, prefix:].mean(dim=1)


def _rollout(model: nn.Module, images: Tensor) -> Tensor:
    """Attention-rollout maps [B, 28, 28] (not yet normalised); eval mode is the caller's."""
    vit = _find_vit(model)
    with torch.no_grad():
        layers = _attention_maps(model, vit, images)
    b, _, n, _ = layers[0].shape
    eye = torch.eye(n, device=images.device)
    rollout = eye.expand(b, n, n)
    for weights in layers:
        mixed = weights.float().mean(dim=1) + eye  # heads averaged; identity for the residual
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    relevance = _readout_row(rollout, vit)
    side = math.isqrt(relevance.shape[1])
    return _upsample(relevance.reshape(b, 1, side, side))


# ------------------------------------------------------------------ examples and the figure


def explanation_examples(
    labels: Tensor, predictions: Tensor, confidences: Tensor, n_mistakes: int = 6
) -> Tensor:
    """Indices [K] of the digits to explain: for each class present, in class order, its first
    correctly classified digit (classes with none are skipped); then up to `n_mistakes`
    misclassified digits, most confident first.

    labels, predictions: [N] class indices; confidences: [N] the predicted class's probability.
    """
    correct = labels == predictions
    per_class = [
        int(hits[0])
        for c in labels.unique(sorted=True)
        if len(hits := torch.nonzero(correct & (labels == c)).flatten())
    ]
    wrong = torch.nonzero(~correct).flatten()
    order = torch.sort(confidences[wrong], descending=True, stable=True).indices
    mistakes = wrong[order[:n_mistakes]].tolist()
    return torch.tensor(per_class + mistakes, dtype=torch.long)


def _caption(label: int | None, prediction: int, confidence: float, source: str | None) -> str:
    first = f"pred {prediction}" if label is None else f"true {label} · pred {prediction}"
    caption = f"{first}\n{confidence:.1%} conf."
    if source:  # a user's file: its name on a line of its own, cut to the digit's width
        caption += f"\n{source if len(source) <= 16 else '…' + source[-15:]}"
    return caption


def explanations_figure(
    images: Tensor,
    labels: Tensor | None,
    predictions: Tensor,
    confidences: Tensor,
    maps: Tensor,
    title: str,
    sources: Sequence[str] | None = None,
) -> Figure:
    """Each digit with its heat map overlaid, captioned true / predicted / confidence.

    images: [K, 1, 28, 28] or [K, 28, 28] in [0, 1]; labels (None for a user's images, whose
    truth is unknown), predictions: [K]; confidences: [K] the predicted class's probability;
    maps: [K, 28, 28] in [0, 1] (from `heatmaps`); sources: [K] file names for the captions.
    Mistakes get a red caption and frame. A colour bar gives the heat scale.
    """
    if labels is None:
        labels_known, labels = False, predictions
    else:
        labels_known = True
    images = images.detach().float().cpu().reshape(-1, IMAGE_SIZE, IMAGE_SIZE).numpy()
    maps_np = maps.detach().float().cpu().numpy()
    mistakes = bool((labels != predictions).any())
    fig, mosaic = mosaic_figure(
        len(images),
        cols=min(max(len(images), 1), 8),
        title_lines=title.count("\n") + 1 + int(mistakes),
        caption_room=CAPTION_ROOM + 8 if sources else CAPTION_ROOM,  # a third line: the file
        right=1.0,  # the colour bar and its label
    )
    mosaic.layer(images, cmap="gray", vmin=0, vmax=1)
    mosaic.layer(maps_np, cmap=HEAT_CMAP, alpha=HEAT_ALPHA, vmin=0, vmax=1)
    for i in range(len(images)):
        label, prediction = int(labels[i]), int(predictions[i])
        caption = _caption(
            label if labels_known else None,
            prediction,
            float(confidences[i]),
            sources[i] if sources else None,
        )
        mosaic.caption(i, caption, wrong=label != prediction)
    grid, width = mosaic.ax.get_position(), fig.get_figwidth()
    bar = fig.add_axes(
        (grid.x1 + 0.15 / width, grid.y0 + 0.1 * grid.height, 0.15 / width, 0.8 * grid.height)
    )
    heat = ScalarMappable(norm=Normalize(0, 1), cmap=HEAT_CMAP)
    fig.colorbar(heat, cax=bar, label="relevance (per digit, 0–1)")
    if mistakes:
        title = f"{title}\nred: misclassified"
    fig.suptitle(title, fontsize=10)
    return fig
