"""docs/extending.md as written: its files add an architecture that trains, tunes and compares
with no other change, and its steps name the files an architecture of the lab touches.

In-process, on a few hundred real digits (the commands get the doc's arguments plus flags that
keep the data tiny).
"""

import re
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from mnist_lab import cli, names
from mnist_lab.config import PROJECT_ROOT
from mnist_lab.errors import ConfigError
from mnist_lab.models import (
    ARCHITECTURES,
    Architecture,
    Option,
    benchmark_models,
    register_architecture,
)

DOC = PROJECT_ROOT / "docs" / "extending.md"
# A fenced block with the file it is, as the doc gives it: "`path`:", a blank line, the block.
NAMED_BLOCK = re.compile(r"^`([\w/.<>]+)`:\n\n```\w+\n(.*?)^```", re.MULTILINE | re.DOTALL)
SCRIPT_BLOCK = re.compile(r"^```python\n(import my_models.*?)^```", re.MULTILINE | re.DOTALL)
DATA = ["--max-train-samples", "200", "--max-test-samples", "100", "--val-size", "100"]


def section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_steps_name_the_files_an_architecture_touches():
    steps = re.findall(r"^\d+\. `([^`]+)`", section("Adding an architecture"), re.MULTILINE)
    assert steps == [
        "mnist_lab/models/<name>.py",
        "mnist_lab/models/__init__.py",
        "experiments/<name>.yaml",
        "tuning/<name>.yaml",
    ]
    for entry in ARCHITECTURES.values():  # the lab's own follow them
        assert isinstance(entry.builder, str) and entry.builder.startswith("mnist_lab.models.")
        assert (PROJECT_ROOT / "experiments" / f"{entry.run_config}.yaml").is_file()
        assert (PROJECT_ROOT / "tuning" / f"{entry.search_space}.yaml").is_file()


@pytest.fixture
def own_architecture(tmp_path, monkeypatch):
    """The doc's files written to the working folder, as a user would: its module (steps 1
    and 2, registered) and the run config and search space (steps 3 and 4)."""
    files = dict(NAMED_BLOCK.findall(section("Adding an architecture")))
    assert sorted(files) == ["experiments/tiny.yaml", "my_models.py", "tuning/tiny.yaml"]
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    ARCHITECTURES.pop("tiny", None)
    sys.modules.pop("my_models", None)


def test_a_builder_that_does_not_take_its_options_is_refused():
    def build(*, width: int) -> None: ...

    with pytest.raises(ConfigError, match=r"'odd': its builder takes width .* options are depth"):
        register_architecture(Architecture("odd", build, {"depth": Option(1, "blocks")}))
    with pytest.raises(ConfigError, match="'cnn' is already in the table"):
        register_architecture(Architecture("cnn", build, {"width": Option(1, "channels")}))
    assert "odd" not in ARCHITECTURES


def test_an_architecture_of_ones_own_trains_tunes_and_compares(
    own_architecture, mnist_dir, tmp_path, monkeypatch
):
    tiny = {
        "train": [*DATA, "--epochs", "1", "--robustness-samples", "0", "--checkpoint", "false"],
        "tune": [*DATA, "--retrain", "none", "--pruner", "none"],
        "compare": ["--output-dir", str(tmp_path / "comparison")],
    }
    ran = []

    def main(argv: list[str]) -> int:
        ran.append(argv[0])
        assert run_main([*argv, *tiny[argv[0]]]) == 0, argv
        return 0

    run_main = cli.main
    monkeypatch.setattr(cli, "main", main)
    exec(SCRIPT_BLOCK.search(section("Adding an architecture")).group(1), {})
    assert ran == ["train", "tune", "compare"]

    assert "tiny" in benchmark_models()
    subcommands = next(a for a in cli.build_parser()._actions if a.dest == "command")
    train_help = " ".join(subcommands.choices["train"].format_help().split())
    assert "one of cnn, vgg16, alexnet, vit, timm_vit, faster_rcnn, tiny," in train_help
    assert "tiny: channels of the conv; default: cnn 24, tiny 8" in train_help  # a shared flag
    client = MlflowClient()
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        f"tags.{names.TAG_MODEL} = 'tiny'",
    )
    kinds = sorted(run.data.tags[names.TAG_KIND] for run in runs)
    assert kinds == ["train", "trial", "trial", "trial", "tune"]
    trained = next(run for run in runs if run.data.tags[names.TAG_KIND] == "train")
    assert trained.data.params["width"] == "8"  # the table's default
    assert trained.data.params["epochs"] == "1" and trained.data.metrics[names.TEST_ACCURACY] > 0
    table = pd.read_csv(tmp_path / "comparison" / "comparison.csv")
    assert list(table["model"]) == ["tiny"]
