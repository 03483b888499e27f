"""The package's layers import only downwards; mlflow and optuna stay in their own subpackages.

Read with `ast`, so the rule holds for every module, imported at test time or not, including
imports inside functions.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mnist_lab"

# Bottom to top. A module may import its own layer's modules and any layer below it.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "names", "database", "settings"},  # __init__ holds only __version__
    {"data"},
    {"models"},  # models/__init__.py: the architecture table, torch-free (`--help` reads it)
    {"inference"},  # a logged model's loader: travels with the model (models/ and below only)
    {"config"},
    {"analysis"},
    {"engine"},
    {"tracking"},
    {"train", "repeats"},  # one training run (and one config at several seeds), logged
    {"tuning", "comparison", "serving"},  # the workflows built on train() and tracking
    {"measure"},
    {"cli", "__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}

# Third-party packages only some units may import. The CLI imports neither (see cli.main).
# inference is the loader MLflow calls; it imports mlflow for the exception of a 400, nothing else.
OWNED = {"mlflow": {"tracking", "inference"}, "optuna": {"tuning"}}
# Subpackages of a layer that must not import each other (siblings, not a stack).
SIBLINGS = {"tuning", "comparison", "serving"}


def unit_of(path: Path) -> str:
    """`mnist_lab/engine/loop.py` → 'engine'; `mnist_lab/config.py` → 'config'."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(("mnist_lab", *path.relative_to(PACKAGE).parent.parts))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append((node.lineno, base))
            if base == "mnist_lab":  # `from mnist_lab import tracking`: the names are units
                found += [(node.lineno, f"mnist_lab.{alias.name}") for alias in node.names]
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def violations(path: Path) -> list[str]:
    unit, out = unit_of(path), []
    for line, module in imports(path):
        top = module.split(".")[0]
        if top in OWNED and unit not in OWNED[top]:
            out.append(f"{path.name}:{line} imports {module}: only {sorted(OWNED[top])} may")
        if top != "mnist_lab" or module == "mnist_lab":
            continue
        target = module.split(".")[1]
        if target == "__version__":
            target = "__init__"
        if target not in RANK:
            out.append(f"{path.name}:{line} imports {module}: not in LAYERS of {__name__}")
        elif RANK[target] > RANK[unit]:
            out.append(f"{path.name}:{line} ({unit}) imports {module}, a layer above it")
        elif target != unit and {target, unit} <= SIBLINGS:
            out.append(f"{path.name}:{line} ({unit}) imports its sibling {module}")
    return out


def test_every_module_sits_in_a_layer() -> None:
    units = {unit_of(path) for path in modules()}
    assert units <= set(RANK), f"add {sorted(units - set(RANK))} to LAYERS"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    assert violations(path) == []


def test_the_checker_catches_an_upward_import(tmp_path: Path, monkeypatch) -> None:
    """A model that logs to MLflow and an engine that imports the tuner are both caught."""
    fake = tmp_path / "mnist_lab"
    (fake / "models").mkdir(parents=True)
    (fake / "engine").mkdir()
    model = fake / "models" / "bad.py"
    model.write_text("import mlflow\nfrom mnist_lab.train import train\n")
    engine = fake / "engine" / "bad.py"
    engine.write_text("def f():\n    from mnist_lab import tuning\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert len(violations(model)) == 2
    assert violations(engine) == ["bad.py:2 (engine) imports mnist_lab.tuning, a layer above it"]


def test_no_two_modules_share_a_file_name():
    """A name says which module it is: `options.py` in two folders would need a disclaimer."""
    seen: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            seen.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
