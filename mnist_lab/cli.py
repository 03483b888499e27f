"""`python -m mnist_lab <command>` (or `mnist-lab <command>`): the entry point MLproject calls.

Every setting is a flag named like the config field with dashes (`--max-train-samples`); the
underscore spelling (`--max_train_samples`, what `mlflow run` appends for undeclared `-P`) works
too. A flag left out, or given as an empty string, means "take experiments/<model>.yaml".
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_lab import __version__
from mnist_lab.config import SETTINGS, TRAIN_FIELDS
from mnist_lab.engine.interrupt import sigterm_as_interrupt
from mnist_lab.errors import ConfigError, LabError
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
        if name not in SETTINGS:
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
    return SETTINGS | {n for m in MODELS for n in model_options(m)}


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """Settings the user actually gave; empty strings (MLproject's "unset") are dropped."""
    given = vars(args)
    return {k: given[k] for k in setting_names() if given.get(k) not in (None, "")}


def cmd_train(args: argparse.Namespace) -> int:
    from mnist_lab.config import load_config

    nproc = _nproc_per_node(args.nproc_per_node)
    seeds = _seeds(args)
    config = None
    if not args.resume:
        config = load_config(args.model, overrides_from(args), config_file=args.config or None)
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
    """One training process: `train(config)` or `resume(resume_run_id)`; (run id, test
    accuracy) from rank 0. Module-level, so torch's launcher can start it in each rank."""
    from mnist_lab.train import resume, train

    if logs:  # a freshly spawned rank: log as the CLI does, and let `kill` end its run KILLED
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with sigterm_as_interrupt() if logs else contextlib.nullcontext():
        resume_run_id = resume_run_id or _restarted_jobs_run()
        result = resume(resume_run_id) if resume_run_id else train(config, run_name=run_name)
    return result.run_id, result.metrics.get("test_accuracy", float("nan"))


def _restarted_jobs_run() -> str | None:
    """In a torchrun job restarted after a rank died (`--max-restarts`), the run its first
    attempt started, if it has a checkpoint to go on from: the job resumes it."""
    from mnist_lab import tracking

    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if not job or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return None
    run_id = tracking.job_run(job)
    if run_id is None:
        return None
    if not tracking.has_checkpoint(run_id):  # died before its first epoch ended: start again
        log.warning("torchrun job %s restarted; its run %s has no checkpoint yet", job, run_id)
        return None
    log.info("torchrun job %s restarted: resuming its run %s", job, run_id)
    return run_id


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


def _flag_true(value: str | None) -> bool:
    """`--force`, `--force true` and MLproject's `--force false` / `--force ''` spellings."""
    if value in (None, "", "false", "False", "0", "no"):
        return False
    if value in ("true", "True", "1", "yes"):
        return True
    raise LabError(f"expected true or false, got {value!r}")


def _csv(values: Sequence[str] | None) -> list[str]:
    """Repeatable, comma-separated flag values as one list; empty items dropped."""
    return [v.strip() for value in values or () for v in value.split(",") if v.strip()]


def cmd_compare(args: argparse.Namespace) -> int:
    from mnist_lab.comparison.compare import compare, markdown, parse_tags

    result = compare(
        best_by=args.best_by or None,
        tags=parse_tags(_csv(args.tag)),
        run_ids=_csv(args.run_ids),
        include_tuning=_flag_true(args.include_tuning),
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

    where = args.where if args.where not in (None, "", "none") else None
    print(register(args.model, force=_flag_true(args.force), where=where))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from mnist_lab import tracking
    from mnist_lab.data.images import collect
    from mnist_lab.serving.predict import explain, predict

    if args.explain and not args.explain.lower().endswith(".png"):
        raise LabError(f"--explain {args.explain}: give a .png file to write the heat maps to")
    sources, images = collect(args.inputs)  # bad input fails before the (slow) model load
    model = tracking.load_model(args.model_uri, allow_pickle=_flag_true(args.allow_pickle))
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

    given = {k: v for k, v in vars(args).items() if v not in (None, "") and str(v) != "none"}
    result = robustness(
        run_id=given.get("run_id"),
        model_uri=given.get("model_uri"),
        samples=_number(given, "samples", int, 2000),
        severities=str(given.get("severities", "3")),
        data_dir=given.get("data_dir"),
        device=given.get("device", "auto"),
        seed=_number(given, "seed", int, 0),
        allow_pickle=_flag_true(given.get("allow_pickle")),
    )
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

    if not _flag_true(args.stale):
        raise LabError("runs: say what to list: --stale (RUNNING runs whose process is gone)")
    stale = tracking.stale_runs()
    for run in stale:
        print(f"{run.run_id}  experiment {run.experiment_id}  {run.run_name}: {run.reason}")
    if not stale:
        print("no stale runs: every RUNNING run has a live process (or cannot be judged)")
    elif _flag_true(args.fix):
        tracking.end_stale(stale)
        print(f"ended {len(stale)} run(s) KILLED")
    else:
        print(f"{len(stale)} stale run(s); --fix ends them KILLED (train, tune and benchmark do)")
    return 0


ALLOW_PICKLE = "load a model logged before the pickle-free format (runs its pickle's code)"


def add_analysis_commands(commands: argparse._SubParsersAction) -> None:
    """compare, benchmark, register, predict, robustness and runs."""
    from mnist_lab.analysis.selection import RUN_BUDGETS
    from mnist_lab.comparison.groups import SELECTABLE_METRICS

    compare = commands.add_parser("compare", help="table and plots of finished runs")
    add_flag(
        compare,
        "best_by",
        help=f"per model, the configuration with the best mean of: {', '.join(SELECTABLE_METRICS)}",
    )
    compare.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="only runs with this tag (repeatable)"
    )
    add_flag(compare, "run_ids", action="append", help="compare exactly these runs (comma list)")
    add_flag(compare, "include_tuning", nargs="?", const="true", help="add each study's winner")
    add_flag(compare, "output_dir", help="where the files go (default: comparison/)")
    compare.set_defaults(handler=cmd_compare)

    bench = commands.add_parser("benchmark", help="train every model, then compare")
    add_flag(bench, "models", action="append", help="comma list (default: every lab model)")
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
        "report", help="results tables from MLflow runs: every configuration, the benchmark"
    )
    report.add_argument(
        "--tag", action="append", metavar="KEY=VALUE", help="only runs with this tag (repeatable)"
    )
    add_flag(report, "output_dir", help="where the tables go (default: results/)")
    report.set_defaults(handler=cmd_report)

    register = commands.add_parser(
        "register", help="best run by val accuracy → MLflow's model registry"
    )
    register.add_argument("--model", required=True, help=f"one of {', '.join(model_names())}")
    register.add_argument("--force", nargs="?", const="true", default=None, help="move champion")
    register.add_argument(
        "--where",
        metavar="BUDGETS",
        help="the best run within these budgets, e.g. 'inference_ms_per_image<=0.1' (a comma "
        f"list of metric<=value, also <, >=, >; metrics: {', '.join(RUN_BUDGETS)})",
    )
    register.set_defaults(handler=cmd_register)

    predict = commands.add_parser("predict", help="digits from images, IDX files or folders")
    predict.add_argument("inputs", nargs="*", help="image files, IDX image files or folders")
    add_flag(predict, "model_uri", help="e.g. models:/mnist-cnn@champion or runs:/<id>/model")
    predict.add_argument("--json", action="store_true", help="machine-readable output")
    predict.add_argument(
        "--explain", metavar="OUT.png", help="also draw what the model looked at (heat maps)"
    )
    add_flag(predict, "allow_pickle", nargs="?", const="true", help=ALLOW_PICKLE)
    predict.set_defaults(handler=cmd_predict, model_uri="models:/mnist-cnn@champion")

    robust = commands.add_parser(
        "robustness", help="a logged model on the MNIST-C corruptions, into a new run"
    )
    add_flag(robust, "run_id", help="evaluate this run's logged model")
    add_flag(robust, "model_uri", help="or this model, e.g. models:/mnist-cnn@champion")
    add_flag(robust, "samples", help="test digits per corruption (default 2000)")
    add_flag(robust, "severities", help="3 (default, MNIST-C's), 1,3,5 or 1..5 for a curve")
    for name in ("data_dir", "device", "seed"):
        add_flag(robust, name, help=f"{name} (as for train)")
    add_flag(robust, "allow_pickle", nargs="?", const="true", help=ALLOW_PICKLE)
    robust.set_defaults(handler=cmd_robustness)

    runs = commands.add_parser("runs", help="RUNNING runs whose process is gone (--stale)")
    add_flag(runs, "stale", nargs="?", const="true", help="list them")
    add_flag(runs, "fix", nargs="?", const="true", help="and end them KILLED")
    runs.set_defaults(handler=cmd_runs)


TUNE_FLAGS = {
    "n_trials": "the study's size: a re-run runs only the missing trials (default 20)",
    "timeout": "stop starting trials after this many seconds",
    "workers": "processes running trials on the same storage (default 1)",
    "storage": "Optuna storage: an SQLAlchemy URL or journal:<file> (default sqlite:///optuna.db "
    "at the repo root)",
    "study_name": "default: the model name; the same name continues the study",
    "objectives": "what the study optimises: one to three of val_accuracy (the default), "
    "val_robust_accuracy, num_params, train_flops_per_image, inference_ms_per_image, "
    "train_time_s, comma-separated, each in its own direction (two or three: a Pareto front). "
    "Optuna cannot prune a multi-objective study: with anything but val_accuracy alone, every "
    "trial trains its full epoch budget (no pruner)",
    "pick": "the trial to retrain, by a rule: 'val_accuracy, inference_ms_per_image<=0.1' is "
    "the most accurate within 0.1 ms a digit (default: the best trial; with several "
    "objectives, every Pareto-optimal trial)",
    "sampler": "tpe (default, seeded; MOTPE for several objectives), random or nsga2",
    "pruner": "auto (default: hyperband for val_accuracy alone, none otherwise), hyperband, "
    "median or none; Optuna cannot prune a multi-objective study, so a pruner with several "
    "objectives is refused",
    "seed": "sampler seed, also the trials' training seed (default 0)",
    "device": "every trial's device (default: auto)",
    "max_train_samples": "train each trial on a subset (e.g. 10000)",
    "max_test_samples": "test subset of the retrain with --retrain subset",
    "val_size": "validation images held out of training (the objective)",
    "data_dir": "MNIST folder (default $MNIST_DATA_DIR or ./data)",
    "space": "search space file (default tuning/<model>.yaml)",
    "retrain": "retrain the winner (the best or picked trial, or each Pareto-optimal one) on the "
    "full data (full, default), on the trials' subset (subset), or not (none)",
    "confirm_seeds": "with a retrain: train the winner and the defaults at K seeds each and "
    "test whether the tuned configuration beats the defaults beyond noise (default 0: off)",
    "heartbeat_interval": "seconds between trial heartbeats on RDB storages (default 60)",
    "nproc_per_node": "not for tune: trials train in one process each (use --workers for "
    "parallel trials); `train --nproc-per-node` trains one model in several",
}


UNSET = ("", "none")


# Settings whose value "none" is a choice, not MLproject's spelling of "unset".
NONE_IS_A_CHOICE = ("pruner", "retrain")


def tune_options(args: argparse.Namespace):
    """The `tune` flags as TuneOptions; "" or "none" means "unset" (MLproject's defaults for
    settings that default to nothing), except where "none" is itself a documented value."""
    from mnist_lab.engine.distributed import requested_world_size
    from mnist_lab.tuning.study import DEFAULT_STORAGE
    from mnist_lab.tuning.tuner import DATA_OPTIONS, TuneOptions

    if args.nproc_per_node not in (None, "") or requested_world_size() > 1:
        raise ConfigError(
            "tune does not train distributed: each trial trains in one process (--workers N "
            "runs N trials at once); drop --nproc-per-node / torchrun, or train the chosen "
            "config with `train --nproc-per-node N`"
        )

    given = {
        k: v
        for k, v in vars(args).items()
        if v is not None and (k in NONE_IS_A_CHOICE or str(v).lower() not in UNSET)
    }
    data = {k: given[k] for k in DATA_OPTIONS if k in given}
    return TuneOptions(
        model=args.model or "cnn",
        n_trials=_number(given, "n_trials", int, 20),
        timeout=_number(given, "timeout", float, None),
        workers=_number(given, "workers", int, 1),
        storage=given.get("storage", DEFAULT_STORAGE),
        study_name=given.get("study_name"),
        sampler=given.get("sampler", "tpe"),
        pruner=given.get("pruner", "auto"),
        seed=_number(given, "seed", int, 0),
        data=data,
        space_path=given.get("space"),
        retrain=given.get("retrain", "full"),
        confirm_seeds=_number(given, "confirm_seeds", int, 0),
        heartbeat_interval=_number(given, "heartbeat_interval", int, 60),
        objectives=given.get("objectives"),
        pick=given.get("pick"),
    )


def cmd_tune(args: argparse.Namespace) -> int:
    from mnist_lab.tuning.tuner import tune

    options = tune_options(args)
    result = tune(options)
    if len(result.objectives) == 1 and result.picked is None:
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
    given = {} if args.seeds in (None, "") else {"seeds": args.seeds}
    return _number(given, "seeds", int, 1)


def _number(given: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    if name not in given:
        return default
    try:
        return kind(given[name])
    except ValueError:
        raise LabError(f"{name}={given[name]!r} is not a valid {kind.__name__}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mnist-lab", description=__doc__.splitlines()[0])
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
        "experiments/<model>.yaml's; flags override both",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_ID",
        default=None,
        help="continue a killed/failed run from its checkpoints/last.pt",
    )
    add_flag(train, "run_name", help="the run's name (default: from the config, e.g. cnn-5ep)")
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
        "as `torchrun --standalone --nproc-per-node N -m mnist_lab train`)",
    )
    add_train_flags(train)
    train.set_defaults(handler=cmd_train)
    add_analysis_commands(commands)

    tune = commands.add_parser("tune", help="Optuna study over tuning/<model>.yaml, in MLflow")
    tune.add_argument("--model", default="cnn", help=f"one of {', '.join(model_names())}")
    for name, text in TUNE_FLAGS.items():
        add_flag(tune, name, help=text, metavar=name.upper())
    tune.set_defaults(handler=cmd_tune)
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
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        tracking.fail_launcher_run("interrupted by the user (Ctrl-C)", killed=True)
        return 130
    except Exception as err:
        tracking.fail_launcher_run(f"{type(err).__name__}: {err}")
        raise
