"""`python -m mnist_lab <command>` (or `mnist-lab <command>`): the entry point MLproject calls.

Every setting is a flag named like the config field with dashes (`--max-train-samples`); the
underscore spelling (`--max_train_samples`, what `mlflow run` appends for undeclared `-P`) works
too. A flag left out, or given as an empty string, means "take experiments/<model>.yaml".
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mnist_lab import __version__
from mnist_lab.config import TRAIN_FIELDS
from mnist_lab.errors import LabError
from mnist_lab.models import MODELS, model_names, model_options

log = logging.getLogger("mnist_lab")


def add_flag(
    parser: argparse.ArgumentParser, name: str, help: str | None = None, **kwargs: Any
) -> None:
    """`--some-name` and `--some_name`, stored as `some_name`, parsed later by the config."""
    flags = [f"--{name.replace('_', '-')}"]
    if "_" in name:
        flags.append(f"--{name}")
    parser.add_argument(*flags, dest=name, default=None, help=help, **kwargs)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """The run settings and every model option as flags (types are checked by the config)."""
    run = parser.add_argument_group("run settings (default: experiments/<model>.yaml)")
    for name, field in TRAIN_FIELDS.items():
        if name == "model":
            continue
        if str(field.type).startswith("bool"):
            run.add_argument(
                *_spellings(name), dest=name, default=None, nargs="?", const="true", metavar="BOOL"
            )
        else:
            add_flag(run, name, metavar=name.upper())
    options = parser.add_argument_group("model options (only those the model takes)")
    for name in sorted(setting_names() - set(TRAIN_FIELDS)):
        add_flag(options, name, metavar=name.upper())


def _spellings(name: str) -> list[str]:
    dashed = f"--{name.replace('_', '-')}"
    return [dashed, f"--{name}"] if "_" in name else [dashed]


def setting_names() -> set[str]:
    """Every run setting and model option that has a flag."""
    return set(TRAIN_FIELDS) - {"model"} | {n for m in MODELS for n in model_options(m)}


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Settings the user actually gave; empty strings (MLproject's "unset") are dropped."""
    given = vars(args)
    return {k: given[k] for k in setting_names() if given.get(k) not in (None, "")}


def cmd_train(args: argparse.Namespace) -> int:
    from mnist_lab.config import load_config
    from mnist_lab.train import resume, train

    if args.resume:
        result = resume(args.resume)
    else:
        config = load_config(args.model, overrides_from(args))
        result = train(config)
    print(f"run {result.run_id}: test_accuracy {result.metrics['test_accuracy']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-lab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mnist-lab {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one model, tracked in MLflow")
    train.add_argument("--model", default="cnn", help=f"one of {', '.join(model_names())}")
    train.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue a killed/failed run from its checkpoints/last.pt",
    )
    add_train_flags(train)
    train.set_defaults(handler=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    from mnist_lab import tracking

    try:
        return args.handler(args)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        tracking.fail_launcher_run(str(err))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        tracking.fail_launcher_run("interrupted by the user (Ctrl-C)", killed=True)
        return 130
    except Exception as err:
        tracking.fail_launcher_run(f"{type(err).__name__}: {err}")
        raise
