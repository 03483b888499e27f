"""The lab (and so its logged model's code, which is modules of mnist_lab) uses only the public
names of MLflow, Optuna, timm, torch and torchvision: an underscore name may change or go in any
release."""

import ast
from pathlib import Path

import pytest

import mnist_lab

LIBRARIES = {"mlflow", "optuna", "timm", "torch", "torchvision"}
MODULES = sorted(Path(mnist_lab.__file__).parent.rglob("*.py"))


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def private_uses(source: str) -> list[str]:
    """`line: name` for each underscore name reached from one of LIBRARIES: imported
    (`from torch._x import y`, `from mlflow.utils import _y`) or as an attribute of a name
    bound to one of them (`nn.modules.batchnorm._BatchNorm`)."""
    tree = ast.parse(source)
    bound: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    bound.add(alias.asname or alias.name.split(".")[0])
                    if any(map(_private, alias.name.split("."))):
                        found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in LIBRARIES:
                continue
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if any(map(_private, [*node.module.split("."), alias.name])):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_no_underscore_names_of_the_libraries(path):
    used = private_uses(path.read_text())
    assert not used, f"{path}: private names of {sorted(LIBRARIES)}: {used}"


def test_the_scan_finds_each_kind_of_private_use():
    source = (
        "import torch._dynamo\n"
        "from mlflow.utils import name_utils\n"
        "from optuna._experimental import experimental_func\n"
        "from timm.layers import _private\n"
        "from torch import nn\n"
        "x = name_utils._GENERATOR_NOUNS\n"
        "y = nn.modules.batchnorm._BatchNorm\n"
        "z = torch.__version__, other._hidden\n"
    )
    assert [line.split(":")[0] for line in private_uses(source)] == ["1", "3", "4", "6", "7"]
