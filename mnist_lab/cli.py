"""`python -m mnist_lab <command>` (or `mnist-lab <command>`): the entry point MLproject calls.

Every setting is a flag named like the config field with dashes (`--max-train-samples`); the
underscore spelling (`--max_train_samples`, what `mlflow run` appends for undeclared `-P`) works
too. A flag left out, or given as an empty string, means "take experiments/<model>.yaml".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mnist_lab import __version__
from mnist_lab.config import SETTINGS, TRAIN_FIELDS
from mnist_lab.engine.interrupt import sigterm_as_interrupt
from mnist_lab.errors import (
    EXIT_INTERRUPTED,
    EXIT_LAB_ERROR,
    EXIT_STATUSES,
    ConfigError,
    LabError,
)
from mnist_lab.models import Option, benchmark_models, model_names, options_by_name
from mnist_lab.serving.robustness_options import RobustnessOptions
from mnist_lab.settings import choices_of, help_of, is_unset, parse_bool, parse_number
from mnist_lab.tuning.tune_options import DATA_OPTIONS, TuneOptions

log = logging.getLogger("mnist_lab")

# Nothing above imports torch or mlflow: `--help` answers without them. Commands import what
# they run when they run.


def _spellings(name: str) -> list[str]:
    """`--some-name` and `--some_name` (what `mlflow run` appends for an undeclared -P)."""
    dashed = f"--{name.replace('_', '-')}"
    return [dashed, f"--{name}"] if "_" in name else [dashed]


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    name: str,
    help: str | None = None,
    boolean: bool = False,
    **kwargs: Any,
) -> None:
    """A flag stored as `name`, None when not given (so the options type's default stands); a
    boolean one may be given bare (`--force`) or with a value (`--force false`)."""
    if boolean:
        kwargs |= {"nargs": "?", "const": "true", "metavar": "BOOL"}
    parser.add_argument(*_spellings(name), dest=name, default=None, help=help, **kwargs)


def _described(text: str, default: Any, choices: Iterable[Any] | None) -> str:
    """Help text with its default and choices; argparse needs "%%" for a literal "%"."""
    parts = [text] if text else []
    if choices:
        parts.append("one of " + ", ".join(map(str, choices)))
    parts.append(f"default: {'unset' if default is None else default}")
    return "; ".join(parts).replace("%", "%%")


def add_option_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    fields: Iterable[dataclasses.Field],
) -> None:
    """One flag per options-type field, with the help, default and choices it declares."""
    for field in fields:
        default = field.default if field.default is not dataclasses.MISSING else None
        text = _described(help_of(field), default, choices_of(field))
        add_flag(parser, field.name, text, boolean=str(field.type).startswith("bool"))


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """The run settings and every model option as flags (types are checked by the config)."""
    run = parser.add_argument_group(
        "run settings (default: experiments/<model>.yaml's value, else the one shown)"
    )
    add_option_flags(run, (f for name, f in TRAIN_FIELDS.items() if name in SETTINGS))
    options = parser.add_argument_group("model options (only those the model takes)")
    for name, per_model in sorted(options_by_name().items()):
        defaults = ", ".join(f"{model} {option.default}" for model, option in per_model.items())
        choices = next((o.choices for o in per_model.values() if o.choices), None)
        add_flag(options, name, _described(_option_help(per_model), defaults, choices))


def _option_help(per_model: dict[str, Option]) -> str:
    """A shared flag's help: each distinct meaning once, with the models it has when they differ
    ("cnn: conv blocks, 1-4; vit, timm_vit: transformer blocks")."""
    models_by_help: dict[str, list[str]] = {}
    for model, option in per_model.items():
        models_by_help.setdefault(option.help, []).append(model)
    if len(models_by_help) == 1:
        return next(iter(models_by_help))
    return "; ".join(f"{', '.join(models)}: {text}" for text, models in models_by_help.items())


def setting_names() -> set[str]:
    """Every run setting and model option that has a flag."""
    return SETTINGS | set(options_by_name())


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Settings the user actually gave; unset ones (MLproject's "") are dropped."""
    given = vars(args)
    return {k: given[k] for k in setting_names() if not is_unset(given.get(k))}


def options_from(cls: type, given: dict[str, Any], **fixed: Any) -> Any:
    """An options type (TuneOptions, RobustnessOptions) from flag values: each given one parsed
    to its field's type, the unset ones left at the type's default."""
    values = dict(fixed)
    for field in dataclasses.fields(cls):
        value = given.get(field.name)
        choices = choices_of(field) or ()
        if field.name in fixed or is_unset(value, none_is_a_choice="none" in choices):
            continue
        kind = str(field.type).split(" |")[0]
        if kind == "bool":
            value = parse_bool(value, field.name)
        elif kind in ("int", "float"):
            value = parse_number(value, field.name, int if kind == "int" else float)
        values[field.name] = value
    return cls(**values)


def _flag_true(value: Any, name: str = "flag") -> bool:
    """A boolean flag: unset is false; else true/false, 1/0, yes/no."""
    return False if is_unset(value) else parse_bool(value, name)


def cmd_train(args: argparse.Namespace) -> int:
    from mnist_lab.config import load_config

    nproc = _nproc_per_node(args.nproc_per_node)
    seeds = _seeds(args)
    config = None
    if not args.resume:
        config = load_config(args.model, overrides_from(args), config_file=args.config or None)
    if _flag_true(args.print_config, "print_config"):
        return _print_config(config, args)
    if seeds != 1:
        return _train_seeds(config, seeds, args, nproc)
    if nproc is not None and config is not None:  # fail here, not in every process
        from mnist_lab.engine.device import resolve_device
        from mnist_lab.engine.distributed import check_settings

        check_settings(config.dist_backend, config.sync_bn, resolve_device(config.device))
    if nproc is None:
        run_id, accuracy = train_worker(config, args.run_name or None, args.resume, logs=False)
    else:
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

        from mnist_lab.engine.distributed import launch

        try:
            run_id, accuracy = launch(nproc, train_worker, config, args.run_name, args.resume)
        except ChildFailedError as err:
            failed = ", ".join(f"rank {r} (exit {f.exitcode})" for r, f in err.failures.items())
            raise LabError(f"distributed training failed: {failed}; see its log above") from None
    if run_id:  # rank 0 (or the one process); torchrun's other ranks have nothing to say
        print(f"run {run_id}: test_accuracy {accuracy:.4f}")
    return 0


def _print_config(config: Any, args: argparse.Namespace) -> int:
    """`train --print-config`: the resolved settings (file, run config, flags) as YAML."""
    import yaml

    if config is None:
        raise ConfigError("--print-config prints a new run's settings; drop --resume")
    flags = sorted(overrides_from(args))
    sources = [config.config_file or "the code's defaults"]
    if flags:
        sources.append("flags " + ", ".join(f"--{f.replace('_', '-')}" for f in flags))
    print(f"# {config.model}: {' + '.join(sources)}")
    print(yaml.safe_dump(config.to_params(), sort_keys=False), end="")
    return 0


def _train_seeds(config: Any, seeds: int, args: argparse.Namespace, nproc: int | None) -> int:
    """`train --seeds N`: N runs of one configuration under a parent run (repeats.py)."""
    from mnist_lab.repeats import check_seeds, train_seeds

    check_seeds(seeds)
    if args.resume or nproc is not None:
        flag = "--resume" if args.resume else "--nproc-per-node"
        raise ConfigError(
            f"--seeds {seeds} trains one seed after another in this process; it does not combine "
            f"with {flag}. Drop --seeds, or {flag}"
        )
    result = train_seeds(config, seeds, run_name=args.run_name or None)
    for run in result.runs:
        print(f"run {run.run_id}: test_accuracy {run.metrics['test_accuracy']:.4f}")
    m = result.metrics
    print(
        f"run {result.run_id} ({seeds} seeds): test_accuracy mean {m['test_accuracy_mean']:.4f}, "
        f"std {m['test_accuracy_std']:.4f}, 95 % interval [{m['test_accuracy_ci95_low']:.4f}, "
        f"{m['test_accuracy_ci95_high']:.4f}] (seeds × test digits)"
    )
    return 0


def train_worker(
    config: Any, run_name: str | None, resume_run_id: str | None, logs: bool = True
) -> tuple[str, float]:
    """One training process (train.start); (run id, test accuracy) from rank 0. Module-level,
    so torch's launcher can start it in each rank."""
    from mnist_lab.train import start

    if logs:  # a freshly spawned rank: log as the CLI does, and let `kill` end its run KILLED
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with sigterm_as_interrupt() if logs else contextlib.nullcontext():
        result = start(config, resume_run_id=resume_run_id, run_name=run_name)
    return result.run_id, result.metrics.get("test_accuracy", float("nan"))


def _nproc_per_node(value: str | None) -> int | None:
    """--nproc-per-node: None (one process, no launcher) when not given."""
    if value in (None, ""):
        return None
    try:
        nproc = int(value)
    except ValueError:
        nproc = 0
    if nproc < 1:
        raise ConfigError(
            f"nproc_per_node={value!r} must be a whole number >= 1 (training processes to start "
            "on this machine)"
        )
    return nproc


def _csv(values: Sequence[str] | None) -> list[str]:
    """Repeatable, comma-separated flag values as one list; empty items dropped."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def cmd_compare(args: argparse.Namespace) -> int:
    from mnist_lab.comparison.compare import compare, markdown, parse_tags

    result = compare(
        best_by=args.best_by or None,
        tags=parse_tags(_csv(args.tag)),
        run_ids=_csv(args.run_ids),
        include_tuning=_flag_true(args.include_tuning, "include_tuning"),
        output_dir=args.output_dir or "comparison",
    )
    print(markdown(result.table, result.significance), end="")
    print(f"written to {result.files['comparison.html'].parent}/; logged to run {result.run_id}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from mnist_lab.comparison.compare import parse_tags
    from mnist_lab.comparison.report import report

    result = report(args.output_dir or "results", tags=parse_tags(_csv(args.tag)))
    for path in result.files:
        print(f"wrote {path}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from mnist_lab.comparison.benchmark import benchmark
    from mnist_lab.comparison.compare import markdown

    overrides = {
        k: getattr(args, k) or None
        for k in ("epochs", "max_train_samples", "max_test_samples", "val_size", "device")
    }
    seeds = _seeds(args)
    result = benchmark(
        _csv(args.models), overrides, output_dir=args.output_dir or "comparison", seeds=seeds
    )
    print(markdown(result.table, result.significance), end="")
    print(f"written to {result.files['comparison.html'].parent}/; logged to run {result.run_id}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from mnist_lab.serving.register import register

    where = None if is_unset(args.where) else args.where
    print(register(args.model, force=_flag_true(args.force, "force"), where=where))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from mnist_lab import tracking
    from mnist_lab.data.images import collect
    from mnist_lab.serving.predict import explain, predict

    if args.explain and not args.explain.lower().endswith(".png"):
        raise LabError(f"--explain {args.explain}: give a .png file to write the heat maps to")
    sources, images = collect(args.inputs)  # bad input fails before the (slow) model load
    model = tracking.load_model(args.model_uri)
    predictions = predict(model, sources, images)
    if args.json:
        print(json.dumps([p.as_dict() for p in predictions], indent=2))
    else:
        for p in predictions:
            print(f"{p.source}: {p.digit}  ({p.confidence:.1%})")
    if args.explain:
        drawn = explain(model, sources, images, predictions, Path(args.explain))
        print(f"heat maps of {drawn} digit(s) written to {args.explain}", file=sys.stderr)
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from mnist_lab.serving.robustness_run import robustness

    result = robustness(options_from(RobustnessOptions, vars(args)))
    metrics = result.result.metrics(result.headline_severity)
    worst = ", ".join(
        f"{name} {metrics[f'robust_accuracy_{name}']:.1%}"
        for name in result.result.worst(3, result.headline_severity)
    )
    print(
        f"run {result.run_id}: robust_accuracy_mean {metrics['robust_accuracy_mean']:.4f} "
        f"(clean {result.result.clean_accuracy:.4f}, severity {result.headline_severity}); "
        f"worst: {worst}"
    )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from mnist_lab import tracking

    if _flag_true(args.sync, "sync"):
        return _sync_spools(tracking)
    if not _flag_true(args.stale, "stale"):
        raise LabError(
            "runs: say what to do: --stale (list RUNNING runs whose process is gone) or --sync "
            "(send spooled records to their tracking server)"
        )
    stale = tracking.stale_runs()
    for run in stale:
        print(f"{run.run_id}  experiment {run.experiment_id}  {run.run_name}: {run.reason}")
    if not stale:
        print("no stale runs: every RUNNING run has a live process (or cannot be judged)")
    elif _flag_true(args.fix, "fix"):
        tracking.end_stale(stale)
        print(f"ended {len(stale)} run(s) KILLED")
    else:
        print(f"{len(stale)} stale run(s); --fix ends them KILLED (train, tune and benchmark do)")
    return 0


def _sync_spools(tracking: Any) -> int:
    """`runs --sync`: send what runs spooled while their tracking server was away."""
    results = tracking.replay_all()
    for result in results:
        state = f"still spooled: {result.error}" if result.error else "complete on the server"
        print(f"{result.run_id}  {result.tracking_uri}: sent {result.sent} record(s); {state}")
    if not results:
        print(f"nothing spooled in {tracking.spool_root()}: every run's records are on its server")
    left = [r for r in results if r.error]
    if left:
        raise LabError(
            f"{len(left)} run(s) still have records in {tracking.spool_root()}: once their "
            "tracking server answers, run `mnist-lab runs --sync` again"
        )
    return 0


def add_analysis_commands(commands: argparse._SubParsersAction) -> None:
    """compare, benchmark, register, predict, robustness and runs."""
    from mnist_lab.names import METRICS, metric_names

    compare = commands.add_parser("compare", help="table and plots of finished runs")
    add_flag(
        compare,
        "best_by",
        help="per model, the configuration with the best mean of a metric (default: the newest "
        f"configuration); one of {', '.join(METRICS)}",
    )
    compare.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="only runs with this tag (repeatable; default: every run)",
    )
    add_flag(
        compare,
        "run_ids",
        action="append",
        help="compare exactly these runs (comma list; default: chosen as above)",
    )
    add_flag(
        compare,
        "include_tuning",
        "add each study's winning configuration (default: false)",
        boolean=True,
    )
    add_flag(compare, "output_dir", help="where the files go (default: comparison/)")
    compare.set_defaults(handler=cmd_compare)

    bench = commands.add_parser("benchmark", help="train every model, then compare")
    default = ", ".join(benchmark_models())
    add_flag(bench, "models", action="append", help=f"comma list (default: {default})")
    for name in ("epochs", "max_train_samples", "max_test_samples", "val_size", "device"):
        add_flag(bench, name, help="override for every model (default: its experiments yaml)")
    add_flag(
        bench,
        "seeds",
        help="train each model at N seeds (default 1); the comparison tests over seeds and digits",
    )
    add_flag(bench, "output_dir", help="where the files go (default: comparison/)")
    bench.set_defaults(handler=cmd_benchmark)

    report = commands.add_parser(
        "report",
        help="results tables from MLflow runs: every configuration, the benchmark, robustness",
    )
    report.add_argument(
        "--tag",
        action="append",
        metavar="KEY=VALUE",
        help="only runs with this tag (repeatable; default: every run)",
    )
    add_flag(report, "output_dir", help="where the tables go (default: results/)")
    report.set_defaults(handler=cmd_report)

    register = commands.add_parser(
        "register", help="best run by val accuracy → MLflow's model registry"
    )
    register.add_argument("--model", required=True, help=f"one of {', '.join(model_names())}")
    add_flag(
        register,
        "force",
        "move @champion even when the new run does not beat it beyond noise (default: false)",
        boolean=True,
    )
    register.add_argument(
        "--where",
        metavar="BUDGETS",
        help="the best run within these budgets, e.g. 'inference_ms_per_image<=0.1' (a comma "
        f"list of metric<=value, also <, >=, >; metrics: {', '.join(metric_names('budget'))}; "
        "default: "
        "no budget)",
    )
    register.set_defaults(handler=cmd_register)

    predict = commands.add_parser("predict", help="digits from images, IDX files or folders")
    predict.add_argument("inputs", nargs="*", help="image files, IDX image files or folders")
    add_flag(
        predict,
        "model_uri",
        help="the model, e.g. runs:/<id>/model (default: models:/mnist-cnn@champion)",
    )
    predict.add_argument(
        "--json", action="store_true", help="machine-readable output (default: one line a digit)"
    )
    predict.add_argument(
        "--explain",
        metavar="OUT.png",
        help="also draw what the model looked at, as heat maps (default: no drawing)",
    )
    predict.set_defaults(handler=cmd_predict, model_uri="models:/mnist-cnn@champion")

    robust = commands.add_parser(
        "robustness", help="a logged model on the MNIST-C corruptions, into a new run"
    )
    add_option_flags(robust, dataclasses.fields(RobustnessOptions))
    robust.set_defaults(handler=cmd_robustness)

    runs = commands.add_parser(
        "runs",
        help="RUNNING runs whose process is gone (--stale); records spooled while a tracking "
        "server was away (--sync)",
    )
    add_flag(runs, "stale", "list them (default: false)", boolean=True)
    add_flag(runs, "fix", "and end them KILLED (default: false)", boolean=True)
    add_flag(
        runs,
        "sync",
        "send the records runs spooled while their tracking server was away (MNIST_LAB_SPOOL_DIR, "
        "default ~/.mnist-lab/spool) to it, in order, each once (default: false)",
        boolean=True,
    )
    runs.set_defaults(handler=cmd_runs)


# `tune`'s data flags are run settings every trial takes: their help is the run config's.
TUNE_DATA_FIELDS = [TRAIN_FIELDS[name] for name in DATA_OPTIONS if name != "seed"]


def tune_options(args: argparse.Namespace) -> TuneOptions:
    """The `tune` flags as TuneOptions: unset ones ("" or "none", MLproject's spellings) take
    the type's default, except where "none" is itself one of the setting's choices."""
    from mnist_lab.engine.distributed import requested_world_size

    if not is_unset(args.nproc_per_node) or requested_world_size() > 1:
        raise ConfigError(
            "tune does not train distributed: each trial trains in one process (--workers N "
            "runs N trials at once); drop --nproc-per-node / torchrun, or train the chosen "
            "config with `train --nproc-per-node N`"
        )
    given = vars(args)
    data = {k: given[k] for k in DATA_OPTIONS if not is_unset(given.get(k))}
    return options_from(TuneOptions, {**given, "space_path": given.get("space")}, data=data)


def cmd_tune(args: argparse.Namespace) -> int:
    from mnist_lab.tuning.tuner import tune

    options = tune_options(args)
    result = tune(options)
    if len(result.objectives) == 1 and result.picked is None and result.winners:
        print(
            f"study {result.study_name}: {result.counts}, best {result.objectives[0]} "
            f"{result.best_value:.4f} with {result.best_overrides} (parent run "
            f"{result.parent_run_id})"
        )
    else:
        print(f"study {result.study_name}: {result.counts} (parent run {result.parent_run_id})")
        if len(result.objectives) > 1:
            print(f"Pareto-optimal trials: {', '.join(map(str, result.pareto))}")
        for winner in result.winners:
            values = ", ".join(f"{o} {winner.metrics[o]:.4g}" for o in result.objectives)
            what = "picked" if winner.trial == result.picked else "Pareto"
            print(f"  {what} trial {winner.trial}: {values} with {winner.overrides}")
    if result.vs_defaults:
        print(result.vs_defaults)
    if result.retrain_run_id:
        metrics = result.retrain_metrics  # one run's, or the mean of --confirm-seeds' seeds
        accuracy = metrics.get("test_accuracy", metrics.get("test_accuracy_mean", float("nan")))
        print(f"retrained as run {result.retrain_run_id}: test_accuracy {accuracy:.4f}")
        for winner, run_id in list(zip(result.winners, result.retrain_run_ids, strict=False))[1:]:
            print(f"  and trial {winner.trial}'s configuration as run {run_id}")
    elif result.retrain_note:
        print(f"not retrained here: {result.retrain_note}")
    if result.confirmation:
        print(result.confirmation)
    return 0


def _seeds(args: argparse.Namespace) -> int:
    """--seeds N (train, benchmark): 1 when not given or given empty (MLproject's unset)."""
    return 1 if is_unset(args.seeds) else parse_number(args.seeds, "seeds", int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-lab", description=__doc__.splitlines()[0], epilog=EXIT_STATUSES
    )
    parser.add_argument("--version", action="version", version=f"mnist-lab {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one model, tracked in MLflow")
    train.add_argument(
        "--model",
        default=None,
        help=f"one of {', '.join(model_names())} (default: the --config's model, else cnn)",
    )
    add_flag(
        train,
        "config",
        metavar="FILE",
        help="a run config, e.g. experiments/cnn_fast.yaml: its settings over "
        "experiments/<model>.yaml's; flags override both (default: none)",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue a killed/failed run from its checkpoints/last.pt (default: a new run)",
    )
    add_flag(train, "run_name", help="the run's name (default: from the config, e.g. cnn-5ep)")
    add_flag(
        train,
        "print_config",
        "print the resolved settings (experiments/<model>.yaml, --config, flags) and exit "
        "(default: false)",
        boolean=True,
    )
    add_flag(
        train,
        "seeds",
        metavar="N",
        help="train N runs of this configuration, seeds SEED … SEED+N-1 (default 1), as child "
        "runs of one parent run that logs their mean, std and 95%% interval",
    )
    add_flag(
        train,
        "nproc_per_node",
        metavar="N",
        help="train in N processes on this machine (DistributedDataParallel, torch's launcher; "
        "as `torchrun --standalone --nproc-per-node N -m mnist_lab train`; default: one "
        "process, no launcher)",
    )
    add_train_flags(train)
    train.set_defaults(handler=cmd_train)
    add_analysis_commands(commands)

    tune = commands.add_parser("tune", help="Optuna study over tuning/<model>.yaml, in MLflow")
    tune.add_argument(
        "--model", default="cnn", help=f"one of {', '.join(model_names())} (default: cnn)"
    )
    add_option_flags(
        tune,
        (
            f
            for f in dataclasses.fields(TuneOptions)
            if f.name not in ("model", "data", "space_path")
        ),
    )
    add_option_flags(tune.add_argument_group("every trial's data"), TUNE_DATA_FIELDS)
    add_flag(tune, "space", "the search space file (default: tuning/<model>.yaml)")
    add_flag(
        tune,
        "nproc_per_node",
        "not for tune: each trial trains in one process (--workers N runs N at once); "
        "`train --nproc-per-node` trains one model in several (default: unset)",
    )
    tune.set_defaults(handler=cmd_tune)
    for command in commands.choices.values():
        command.epilog = EXIT_STATUSES
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
        with sigterm_as_interrupt():  # `kill` ends a run KILLED, as Ctrl-C does
            return args.handler(args)
    except LabError as err:
        print(f"error: {err}", file=sys.stderr)
        tracking.fail_launcher_run(str(err))
        return EXIT_LAB_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        tracking.fail_launcher_run("interrupted by the user (Ctrl-C)", killed=True)
        return EXIT_INTERRUPTED
    except Exception as err:
        tracking.fail_launcher_run(f"{type(err).__name__}: {err}")
        raise
