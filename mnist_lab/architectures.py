"""The architecture table's names and options as data, read from the builders' source with `ast`
(never imported: importing a builder imports torch, which `--help` must not wait for).

The builders' keyword-only parameters are the single statement of each model's options and
their defaults; `Literal[...]` annotations give their choices. `models.model_options` reads the
same signatures by import; a test keeps the two readings equal. OPTION_HELP says what each
option means, for `train --help`.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parent / "models"
TIMM_PREFIX = "timm:"

OPTION_HELP = {
    "depth": "blocks: conv blocks (cnn, 1-4) or transformer blocks (vit, timm_vit)",
    "width": "channels of the first conv block (cnn)",
    "convs": "convolutions a conv block (cnn, 1-4)",
    "pool": "how the last map reaches the head (cnn)",
    "dropout": "dropout before the head (in the transformer for vit, timm_vit)",
    "input_norm": "per-image rescaling before MNIST normalisation",
    "weights": "pretrained weights: none, imagenet or the path of a state-dict file",
    "input_size": "32 (native small-image adaptation) or 224 (ImageNet transfer set-up)",
    "freeze_features": "train only the new classifier (linear probing)",
    "patch_size": "pixels a patch side; must divide 28",
    "dim": "embedding width; a multiple of heads",
    "heads": "attention heads",
    "mlp_ratio": "MLP width over dim",
    "drop_path": "stochastic depth of the last block",
    "backbone": "the detector's backbone: small, mobilenet_v3 or resnet50",
    "weights_backbone": "backbone weights: none, imagenet or the path of a state-dict file",
    "trainable_backbone_layers": "backbone stages that train (the rest stay frozen)",
    "canvas_size": "pixels a scene side",
    "min_scale": "smallest digit scale in a scene",
    "max_scale": "largest digit scale in a scene",
    "max_digits": "digits a training scene holds at most",
    "image_size": "the detector's internal resize (0: the canvas size)",
}


@dataclass(frozen=True)
class Option:
    """One builder option: its default and, where its annotation is a Literal, its choices."""

    name: str
    default: Any
    choices: tuple[Any, ...] | None = None


@functools.cache
def architectures() -> dict[str, dict[str, Option]]:
    """Model name → its builder's options, in the architecture table's order."""
    tree = ast.parse((MODELS_DIR / "__init__.py").read_text())
    modules = {
        alias.asname or alias.name: node.module.rsplit(".", 1)[-1]
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnist_lab.models.")
        for alias in node.names
    }
    table = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "MODELS"
    )
    assert isinstance(table, ast.Dict)
    return {
        ast.literal_eval(key): _builder_options(modules[value.id], value.id)
        for key, value in zip(table.keys, table.values, strict=True)
        if key is not None and isinstance(value, ast.Name)
    }


def model_names() -> list[str]:
    """The table's names, then the hint 'timm:<name>' for any timm model."""
    return [*architectures(), f"{TIMM_PREFIX}<name>"]


def model_options(name: str) -> dict[str, Any]:
    """Option name → default for model `name` (TIMM_OPTIONS for 'timm:<name>'; {} for a name
    the table does not hold)."""
    if name.startswith(TIMM_PREFIX):
        return _timm_options()
    return {o.name: o.default for o in architectures().get(name, {}).values()}


@functools.cache
def _timm_options() -> dict[str, Any]:
    """models/__init__.py's TIMM_OPTIONS: what any `timm:<name>` takes."""
    tree = ast.parse((MODELS_DIR / "__init__.py").read_text())
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if getattr(target, "id", None) == "TIMM_OPTIONS" and node.value is not None:
            return ast.literal_eval(node.value)
    return {}


def options_by_name() -> dict[str, dict[str, Option]]:
    """Option name → {model: its Option}: what a shared flag such as --depth means per model."""
    found: dict[str, dict[str, Option]] = {}
    for model, options in architectures().items():
        for option in options.values():
            found.setdefault(option.name, {})[model] = option
    return found


def _builder_options(module: str, function: str) -> dict[str, Option]:
    tree = ast.parse((MODELS_DIR / f"{module}.py").read_text())
    builder = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    args = builder.args
    return {
        arg.arg: Option(arg.arg, ast.literal_eval(default), _choices(arg.annotation, tree))
        for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
        if default is not None
    }


def _choices(annotation: ast.expr | None, tree: ast.Module) -> tuple[Any, ...] | None:
    """The values of a `Literal[...]` annotation, or of a `Name = Literal[...]` alias defined in
    the builder's module or in the models module it imports it from."""
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Literal":
        elements = annotation.slice
        values = elements.elts if isinstance(elements, ast.Tuple) else [elements]
        return tuple(ast.literal_eval(v) for v in values)
    if isinstance(annotation, ast.Name):
        for module in (tree, *_imported_from(tree, annotation.id)):
            for node in module.body:
                if isinstance(node, ast.Assign) and any(
                    getattr(t, "id", None) == annotation.id for t in node.targets
                ):
                    return _choices(node.value, module)
    return None


def _imported_from(tree: ast.Module, name: str) -> list[ast.Module]:
    return [
        ast.parse((MODELS_DIR / f"{node.module.rsplit('.', 1)[-1]}.py").read_text())
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith("mnist_lab.models.")
        and any(alias.name == name for alias in node.names)
    ]
