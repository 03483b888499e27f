"""`tune`: an Optuna study over `tuning/<model>.yaml`, every trial a nested MLflow run.

    options ─► checks (model, space, data, storage) ─► study (created or continued)
            ─► parent run ─► N workers × trials: suggest ─► train(evaluate_test=False) ─► prune?
            ─► study summary + plots on the parent ─► the winner(s) retrained as `train` runs

The objective is the trial's best validation accuracy, or up to three objectives at once
(`objectives.py`: a Pareto front, `pareto.py`); the test set is only touched by the retrain.
A new study's first trial is the model's defaults (`defaults.py`). `n_trials` is the size of
the study, not of this invocation: a re-run after Ctrl-C, a killed worker or on another machine
runs only the trials still missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from mnist_lab import names, tracking
from mnist_lab.analysis.predictions import correct_matrix
from mnist_lab.analysis.statistics import ALPHA, compare_groups
from mnist_lab.config import TrainConfig, load_config
from mnist_lab.data.mnist import load_mnist
from mnist_lab.database import redact
from mnist_lab.engine.device import resolve_device, usable_cpus
from mnist_lab.engine.interrupt import sigterm_as_interrupt
from mnist_lab.engine.loop import TrainState
from mnist_lab.errors import EXIT_LAB_ERROR, ConfigError, LabError, StoreUnreachable
from mnist_lab.repeats import RepeatsResult, train_seeds
from mnist_lab.train import train
from mnist_lab.tuning.claim import claim, release
from mnist_lab.tuning.defaults import ATTR_DEFAULTS, enqueue_defaults
from mnist_lab.tuning.objectives import (
    AUTO_PRUNER,
    DEFAULT_OBJECTIVES,
    Objectives,
    check_measurable,
    measure,
    parse_objectives,
    set_constraints,
    trial_metrics,
)
from mnist_lab.tuning.pareto import ATTR_METRICS, ATTR_RUN_ID, Winner, choose, log_choice
from mnist_lab.tuning.space import SearchSpace, load_space
from mnist_lab.tuning.study import (
    ATTR_FAILURE,
    ATTR_OVERRIDES,
    StopWhenDone,
    make_pruner,
    make_sampler,
    open_storage,
    open_study,
    state_counts,
    trials_done,
)
from mnist_lab.tuning.tune_options import (
    DATA_OPTIONS,
    PRUNERS,
    RETRAIN_MODES,
    SAMPLERS,
    TuneOptions,
)

log = logging.getLogger(__name__)

SUBSET_OPTIONS = ("max_train_samples", "max_test_samples")
ATTR_ATTEMPTS = "attempts"  # trial numbers that ran these parameters (retries after a crash)


@dataclass
class TuneResult:
    study_name: str
    parent_run_id: str
    trials_run: int  # finished by this invocation
    counts: dict[str, int]  # over the whole study: COMPLETE / PRUNED / FAIL
    best_value: float
    best_overrides: dict[str, Any]
    seconds: float
    retrain_run_id: str | None = None
    retrain_metrics: dict[str, float] = field(default_factory=dict)
    retrain_note: str = ""  # why this process did not retrain, when another does
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    winners: list[Winner] = field(default_factory=list)  # what --retrain trains
    pareto: list[int] = field(default_factory=list)  # Pareto-optimal trials (multi-objective)
    picked: int | None = None  # the trial --pick chose
    vs_defaults: str = ""  # how the winner(s) compare with the defaults (trial 0)
    retrain_run_ids: list[str] = field(default_factory=list)  # one per winner
    confirmation: str = ""  # with confirm_seeds: tuned vs defaults, in words


class PruningListener:
    """Engine listener: report each epoch's validation accuracy; raise TrialPruned when told.

    `prune=False` (a study of other objectives, or of several: Optuna's `Trial.report` raises
    NotImplementedError for those) reports nothing. Either way it keeps the training state,
    whose model the tuner measures after training."""

    def __init__(self, trial: optuna.Trial, prune: bool = True) -> None:
        self.trial = trial
        self.prune = prune
        self.run_id: str | None = None
        self.state: TrainState | None = None

    def on_epoch_end(self, state: TrainState, metrics: dict[str, float]) -> None:
        self.run_id = tracking.active_run_id()
        self.state = state
        if not self.prune:
            return
        self.trial.report(metrics[names.VAL_ACCURACY], step=state.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {state.epoch}: val_accuracy {metrics[names.VAL_ACCURACY]:.4f}"
            )


@dataclass
class Job:
    """What a worker (this process or a spawned one) needs to run trials: picklable."""

    options: TuneOptions
    space: SearchSpace
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    quota: int
    worker: int = 0
    objectives: Objectives = field(default_factory=Objectives)


class Objective:
    """One trial: suggest, train without the test set, measure what the objectives need,
    return the objectives' values (the best validation accuracy, by default)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.model = job.options.model
        self.unreachable: StoreUnreachable | None = None  # what stopped the study

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        """A tracking server away past `MNIST_LAB_STORE_WAIT_S`, at the trial's start or end,
        stops the study rather than failing this trial and every later one: the trial's run
        is ended FAILED in its spool, the trial is FAIL (counted only if it failed by itself),
        and `run_trials` raises the error once Optuna has ended the trial."""
        listener = PruningListener(trial, prune=self.job.objectives.prunable)
        try:
            # MLflow's server makes a run and chooses its id: a trial cannot start without it.
            study = self.job.options.name
            tracking.await_server(
                f"trial {trial.number} of study {study!r} (the server makes its run)"
            )
            return self._run(trial, listener)
        except StoreUnreachable as err:
            if listener.run_id:
                reason = trial.user_attrs.get(ATTR_FAILURE) or (
                    f"the tracking server was away when the trial ended; the study stopped: {err}"
                )
                tracking.fail_spooled_run(listener.run_id, reason, {names.TAG_TRIAL_STATE: "FAIL"})
            self.unreachable = err
            trial.study.stop()
            raise

    def _run(self, trial: optuna.Trial, listener: PruningListener) -> float | list[float]:
        self._end_run_of_retried(trial)
        overrides = self.job.space.suggest(trial)
        trial.set_user_attr(ATTR_OVERRIDES, overrides)
        name = f"trial-{trial.number}"
        tags = {
            names.TAG_STUDY_NAME: self.job.options.name,
            names.TAG_TRIAL_NUMBER: str(trial.number),
            names.TAG_KIND: "trial",
            **tracking.child_run_tags(self.job.parent_run_id, name),
        }
        if trial.user_attrs.get(ATTR_DEFAULTS):
            tags[names.TAG_DEFAULTS_TRIAL] = "true"
        params = {"model": self.model, **self.job.space.fixed, **overrides}
        objectives = self.job.objectives
        try:
            # A combination no run can use (dim not divisible by heads) fails right here.
            config = trial_config(self.job.options, self.job.space, overrides)
            result = train(
                config,
                listeners=(listener,),
                nested=True,
                tags=tags,
                evaluate_test=False,
                run_name=name,
            )
            metrics = trial_metrics(result.metrics)
            measured = measure(listener.state, config, objectives.measured)
            if measured:
                tracking.log_run_metrics(result.run_id, measured)
            metrics |= measured | {names.VAL_DIGITS: float(config.val_size)}
            set_constraints(trial, objectives, metrics)
        except optuna.TrialPruned as pruned:
            tracking.mark_trial_run(listener.run_id or self._run_of(trial), "PRUNED", str(pruned))
            raise
        except KeyboardInterrupt:  # does not wait for an away server
            self._mark_failed(trial, listener, "interrupted by the user (Ctrl-C)", wait=0.0)
            raise
        except StoreUnreachable:  # the run's records wait in its spool: the study stops
            raise
        except Exception as err:  # NaN loss, out of memory, ...: FAIL, and the study goes on
            reason = f"{type(err).__name__}: {err}"
            trial.set_user_attr(ATTR_FAILURE, reason)
            self._mark_failed(trial, listener, reason, tags, params)
            raise
        trial.set_user_attr(ATTR_METRICS, metrics)
        trial.set_user_attr(ATTR_RUN_ID, result.run_id)
        tracking.mark_trial_run(result.run_id, "COMPLETE")
        values = objectives.values(metrics)
        return values if objectives.multi else values[0]

    def _run_of(self, trial: optuna.Trial) -> str | None:
        """The run `train()` started for `trial` under this invocation's parent, if any."""
        query = {
            names.TAG_STUDY_NAME: self.job.options.name,
            names.TAG_TRIAL_NUMBER: str(trial.number),
            **tracking.child_run_tags(self.job.parent_run_id),
        }
        return tracking.find_run(self.job.experiment_id, query)

    def _mark_failed(
        self,
        trial: optuna.Trial,
        listener: PruningListener,
        reason: str,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        wait: float | None = None,
    ) -> None:
        """Tag the trial's run FAIL; with `tags`, log a FAILED run if `train()` started none
        (bad combination, missing weights), so every failed trial has its run. A server away
        past `wait` s (default `MNIST_LAB_STORE_WAIT_S`) stops the study; with `wait=0` (an
        interrupted trial) it does not: what the run spooled is kept for `runs --sync`."""
        try:
            run_id = listener.run_id or self._run_of(trial)
            if run_id:
                tracking.mark_trial_run(run_id, "FAIL", reason, wait)
            elif tags is not None:
                tracking.log_failed_run(self.job.experiment_id, tags, params or {}, reason)
        except StoreUnreachable:
            if wait is None:
                raise
        except Exception:
            pass  # the trial's own error is the one to report

    def _end_run_of_retried(self, trial: optuna.Trial) -> None:
        """A retry of a trial whose worker died (the heartbeat callback copied its user attrs):
        the earlier attempts' runs are still RUNNING; end them KILLED."""
        attempts = list(trial.user_attrs.get(ATTR_ATTEMPTS, []))
        for number in attempts:
            query = {
                names.TAG_STUDY_NAME: self.job.options.name,
                names.TAG_TRIAL_NUMBER: str(number),
            }
            if run_id := tracking.find_run(self.job.experiment_id, query):
                reason = f"its worker stopped sending heartbeats; retried as trial {trial.number}"
                tracking.kill_orphaned_run(run_id, reason)
        trial.set_user_attr(ATTR_ATTEMPTS, [*attempts, trial.number])


def trial_config(
    options: TuneOptions, space: SearchSpace, overrides: dict[str, Any], data: dict | None = None
) -> TrainConfig:
    """Space `fixed` < command-line data options < the trial's suggestions."""
    data = options.data if data is None else data
    return load_config(options.model, {**space.fixed, **data, **overrides})


def run_trials(job: Job) -> None:
    """Run up to `job.quota` trials of the study (stopping early when the study is full)."""
    options = job.options
    storage = open_storage(options.storage, options.heartbeat_interval)
    study = optuna.load_study(study_name=options.name, storage=storage)
    # Seeded by study size and worker: a resumed study or a second worker must not replay the
    # first trials' random draws.
    seed = options.seed + 1000 * job.worker + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(options.sampler, seed, options.n_trials)
    kind = job.objectives.pruner
    study.pruner = make_pruner(kind, job.space, _epoch_budget(options, job.space))
    objective = Objective(job)
    study.optimize(
        objective,
        n_trials=job.quota,
        timeout=options.timeout,
        catch=(Exception,),
        callbacks=[StopWhenDone(options.n_trials)],
        gc_after_trial=False,
    )
    if objective.unreachable is not None:
        raise objective.unreachable


def _worker_main(job: Job) -> None:
    """Entry point of a spawned worker: same tracking store and experiment as the parent."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    os.environ.pop("MLFLOW_RUN_ID", None)  # the parent's run; the worker's runs are children
    os.environ["MLFLOW_TRACKING_URI"] = job.tracking_uri
    os.environ["MLFLOW_EXPERIMENT_ID"] = job.experiment_id
    os.environ.pop("MLFLOW_EXPERIMENT_NAME", None)
    torch.set_num_threads(max(1, usable_cpus() // job.options.workers))
    logging.basicConfig(level=logging.INFO, format=f"[worker {job.worker}] %(message)s")
    try:
        run_trials(job)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except StoreUnreachable as err:
        log.error("%s", err)
        raise SystemExit(EXIT_LAB_ERROR) from None


def _run_workers(jobs: list[Job]) -> None:
    """Trials in this process for one worker; else one spawned process per worker.

    Spawned, not forked: a fork would copy torch's thread pools and MLflow's logging threads.
    On Ctrl-C the terminal interrupts every worker itself; any still running after a grace
    period is interrupted, then terminated, so each ends its trial and run cleanly first.
    """
    if len(jobs) == 1:
        run_trials(jobs[0])
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker_main, args=(job,)) for job in jobs]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        _stop(processes)
        raise
    crashed = [p.exitcode for p in processes if p.exitcode != 0]
    if crashed and not tracking.server_answers():
        raise StoreUnreachable(
            f"{len(crashed)} worker(s) stopped: the tracking server {tracking.tracking_uri()} "
            "did not answer (their logs say for how long); once it answers, send what their "
            "runs spooled with `mnist-lab runs --sync`, and run the same `tune` again to go on"
        )
    if crashed:
        log.warning(
            "%d worker(s) exited with %s; their running trials are re-queued when the study "
            "resumes (heartbeat + retry)",
            len(crashed),
            crashed,
        )


def _stop(processes: list[multiprocessing.process.BaseProcess]) -> None:
    deadline = time.monotonic() + 20
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
            process.join(20)
        if process.is_alive():
            process.terminate()
            process.join()


def check(options: TuneOptions) -> tuple[SearchSpace, TrainConfig, Objectives]:
    """Reject bad input before any trial: returns the space, the trials' base config and the
    objectives (with the pick rule and the pruner they allow)."""
    if options.n_trials < 1:
        raise ConfigError(f"n_trials={options.n_trials} must be >= 1")
    if options.workers < 1:
        raise ConfigError(f"workers={options.workers} must be >= 1")
    if options.timeout is not None and options.timeout <= 0:
        raise ConfigError(f"timeout={options.timeout} must be > 0 seconds (or unset)")
    if options.heartbeat_interval < 1:
        raise ConfigError(f"heartbeat_interval={options.heartbeat_interval} must be >= 1 s")
    if options.confirm_seeds == 1 or options.confirm_seeds < 0:
        raise ConfigError(
            f"confirm_seeds={options.confirm_seeds} must be 0 (off) or >= 2: seeds of the winner "
            "and of the defaults, to tell them apart beyond noise"
        )
    if options.confirm_seeds and options.retrain == "none":
        raise ConfigError("confirm_seeds needs a retrain: drop --retrain none")
    for name, value, allowed in (
        ("sampler", options.sampler, SAMPLERS),
        ("pruner", options.pruner, (AUTO_PRUNER, *PRUNERS)),
        ("retrain", options.retrain, RETRAIN_MODES),
    ):
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} must be one of {', '.join(allowed)}")
    if not re.fullmatch(r"[\w.:-]+", options.name):
        raise ConfigError(
            f"study_name={options.name!r}: use letters, digits, '_', '-', '.' or ':' only"
        )
    unknown = sorted(set(options.data) - set(DATA_OPTIONS))
    if unknown:
        raise ConfigError(f"tune takes no setting {unknown}; put it in the space file's fixed:")
    objectives = parse_objectives(
        options.objectives, options.pick, options.pruner, options.constraint
    )
    load_config(options.model, options.data)  # unknown model, bad data options
    space = load_space(options.model, options.space_path)
    base = trial_config(options, space, {})
    check_measurable(objectives, base)
    resolve_device(base.device)
    load_mnist(base.data_dir)  # missing or corrupt data fails here, not in every trial
    return space, base, objectives


def tune(options: TuneOptions) -> TuneResult:
    """Run (or continue) the study, log it to MLflow, and retrain its winner(s)."""
    space, base, objectives = check(options)
    with sigterm_as_interrupt():
        return _tune(options, space, base, objectives)


def _tune(
    options: TuneOptions, space: SearchSpace, base: TrainConfig, objectives: Objectives
) -> TuneResult:
    storage = open_storage(options.storage, options.heartbeat_interval)
    objective_data: dict[str, Any] = {
        "max_train_samples": base.max_train_samples,
        "val_size": base.val_size,
    }
    if objectives.chosen != DEFAULT_OBJECTIVES:  # studies of val_accuracy keep their fingerprint
        objective_data["objectives"] = list(objectives.chosen)
    study = open_study(
        storage,
        options.name,
        space,
        objective_data,
        objectives=objectives.chosen,
        directions=objectives.directions,
    )
    claimant = {"host": socket.gethostname(), "pid": os.getpid()}
    enqueue_defaults(options.storage, storage, study, space, claimant)
    done_before = trials_done(study)
    missing = max(0, options.n_trials - done_before)
    log.info(
        "study %s (%s): %d of %d trials done, %d to run on %d worker(s)",
        options.name,
        redact(options.storage),
        done_before,
        options.n_trials,
        missing,
        options.workers,
    )
    tags = {
        names.TAG_STUDY_NAME: options.name,
        names.TAG_MODEL: options.model,
        names.TAG_KIND: "tune",
        names.TAG_SAMPLER: options.sampler,
        names.TAG_PRUNER: objectives.pruner,
        names.TAG_OBJECTIVES: ",".join(objectives.chosen),
        names.TAG_STORAGE: redact(options.storage),
        names.TAG_GIT_COMMIT: tracking.git_commit(),
    }
    start = time.perf_counter()
    with tracking.run(run_name=f"tune-{options.name}", tags=tags):
        parent_run_id = tracking.active_run_id()
        tracking.log_params(_parent_params(options))

        def job(quota: int, worker: int) -> Job:
            experiment, uri = tracking.active_experiment_id(), tracking.tracking_uri()
            return Job(options, space, parent_run_id, experiment, uri, quota, worker, objectives)

        if missing and options.workers > 1:
            # Enqueued trials (the defaults) run here first: on SQLite, which has no row locks,
            # two workers can pop the same waiting trial and both train it.
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if first := min(len(waiting), missing):
                run_trials(job(first, 0))
                missing -= first
        if missing:
            workers = min(options.workers, missing)
            _run_workers(
                [job(missing // workers + (i < missing % workers), i) for i in range(workers)]
            )
        seconds = time.perf_counter() - start
        study = optuna.load_study(study_name=options.name, storage=storage)
        result = _summarize(
            study, options, objectives, parent_run_id, trials_done(study) - done_before, seconds
        )
    retrain = options.retrain != "none" and result.winners
    claim_key = _claim_the_retrain(options, storage, result) if retrain else None
    if claim_key:
        try:
            _retrain(options, space, result)
        except BaseException:  # failed or interrupted: let the next `tune` retrain it
            release(options.storage, storage, study, claim_key, _claimant(result))
            raise
        study.set_user_attr(f"{claim_key}:run_id", result.retrain_run_id)
    return result


def _claimant(result: TuneResult) -> dict[str, Any]:
    return {"tune_run_id": result.parent_run_id, "host": socket.gethostname(), "pid": os.getpid()}


def _claim_the_retrain(
    options: TuneOptions, storage: optuna.storages.BaseStorage, result: TuneResult
) -> str | None:
    """The claim's key when this process is to retrain the study's best configuration, else
    None with `result.retrain_note` saying why. Several `tune` processes (machines) share a
    study; exactly one retrains it: the last to finish (trials still running elsewhere mean
    another worker finishes later) that wins an atomic claim in the storage."""
    study = optuna.load_study(study_name=options.name, storage=storage)
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial must not hold it up
    active = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    if active:
        result.retrain_note = (
            f"{len(active)} trial(s) still running on other workers; the last one to finish "
            "retrains the best configuration"
        )
        return None
    key = f"retrain:{options.retrain}:{trials_done(study)}"
    if result.objectives != DEFAULT_OBJECTIVES or result.picked is not None:  # other winners
        trials = ",".join(str(w.trial) for w in result.winners)
        if len(trials) > 100:
            trials = hashlib.sha256(trials.encode()).hexdigest()[:16]
        key += f":trials={trials}"
    mine = _claimant(result)
    holder = claim(options.storage, storage, study, key, mine)
    if holder == mine:
        return key
    retrain_run = study.user_attrs.get(f"{key}:run_id", "in progress")
    result.retrain_note = (
        f"the retrain of these {trials_done(study)} trials is held by tune run "
        f"{holder['tune_run_id']} ({holder['host']}, pid {holder['pid']}); its retrain run: "
        f"{retrain_run}"
    )
    log.info("not retraining here: %s", result.retrain_note)
    return None


def _summarize(
    study: optuna.Study,
    options: TuneOptions,
    objectives: Objectives,
    parent_run_id: str,
    trials_run: int,
    seconds: float,
) -> TuneResult:
    """Counts, winner(s), the defaults' comparison and plots of the whole study, logged to the
    parent run."""
    counts = state_counts(study)
    summary = {
        names.N_COMPLETE_TRIALS: counts[TrialState.COMPLETE],
        names.N_PRUNED_TRIALS: counts[TrialState.PRUNED],
        names.N_FAILED_TRIALS: counts[TrialState.FAIL],
        names.TRIALS_PER_MINUTE: 60 * trials_run / seconds if seconds > 0 else 0.0,
    }
    tracking.log_metrics({k: float(v) for k, v in summary.items()})
    _log_plots(study, objectives)
    state_names = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}
    by_state = {label: counts[state] for label, state in state_names.items()}
    by_state["FAIL"] = counts[TrialState.FAIL]
    if counts[TrialState.COMPLETE] == 0:
        raise LabError(
            f"no trial of study {options.name!r} completed ({by_state}); the failed trials' "
            f"runs carry the reason in their {names.TAG_FAILURE_REASON} tag"
        )
    choice = choose(study, objectives)
    log_choice(study, objectives, choice, options.name)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    winners = [
        {
            "trial": w.trial,
            **{o: w.metrics[o] for o in objectives.chosen},
            "gain_over_defaults": w.gains,
            "overrides": w.overrides,
            "optuna_params": trials[w.trial].params,
            "command": _train_command(options.model, w.overrides),
        }
        for w in choice.winners
    ]
    report: dict[str, Any] = dict(winners[0]) if winners else {}
    report |= {
        "objectives": list(objectives.chosen),
        "pick": str(objectives.pick) if objectives.pick else None,
        "constraints": [str(c) for c in objectives.constraints],
        "winners": winners,
        "pareto_trials": choice.pareto,
        "defaults": None
        if choice.defaults is None
        else {
            "trial": choice.defaults.trial,
            **{o: choice.defaults.metrics[o] for o in objectives.chosen},
        },
        "vs_defaults": choice.vs_defaults,
        "note": choice.note,
    }
    first = choice.winners[0] if choice.winners else None
    best_value = first.metrics[objectives.chosen[0]] if first else float("nan")
    overrides = first.overrides if first else {}
    if not objectives.multi and objectives.chosen == DEFAULT_OBJECTIVES and choice.pareto:
        tracking.log_metrics({names.BEST_VAL_ACCURACY: study.best_value})
    if first:
        tracking.set_tags({names.TAG_BEST_PARAMS: json.dumps(overrides, sort_keys=True)})
    tracking.log_dict(report, names.BEST_PARAMS_FILE)
    log.info(
        "study %s: %s; %s%s",
        options.name,
        by_state,
        _describe_winners(choice.winners, objectives),
        f"; {choice.note}" if choice.note else "",
    )
    log.info("%s", choice.vs_defaults)
    result = TuneResult(
        options.name, parent_run_id, trials_run, by_state, best_value, overrides, seconds
    )
    result.objectives = objectives.chosen
    result.winners = choice.winners
    result.pareto = choice.pareto
    result.picked = choice.picked
    result.vs_defaults = choice.vs_defaults
    result.retrain_note = choice.note
    return result


def _describe_winners(winners: list[Winner], objectives: Objectives) -> str:
    if not winners:
        return "no winner"
    what = "Pareto-optimal trials" if len(winners) > 1 else "winner"
    return f"{what}: " + "; ".join(
        f"trial {w.trial} "
        + ", ".join(f"{o} {w.metrics[o]:.4g}" for o in objectives.chosen)
        + f" with {w.overrides}"
        for w in winners
    )


def _log_plots(study: optuna.Study, objectives: Objectives) -> None:
    """Optuna's plots of the study; for several objectives, of the first one (the Pareto
    front is `pareto.py`'s). Intermediate values exist where trials report them (pruning)."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    first = {"target_name": objectives.chosen[0]}
    if objectives.multi:
        first["target"] = lambda trial: trial.values[0]
    plots = {
        names.PLOT_OPTIMIZATION_HISTORY: (vis.plot_optimization_history, first),
        names.PLOT_PARAM_IMPORTANCES: (vis.plot_param_importances, first),
        names.PLOT_PARALLEL_COORDINATE: (vis.plot_parallel_coordinate, first),
    }
    if objectives.prunable:
        plots[names.PLOT_INTERMEDIATE_VALUES] = (vis.plot_intermediate_values, {})
    for path, (plot, kwargs) in plots.items():
        try:
            axes = plot(study, **kwargs)
        except Exception as err:  # e.g. importances need two finished trials
            log.warning("skipped %s: %s", path, err)
            continue
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        figure.set_size_inches(9, 6)
        figure.tight_layout()
        tracking.log_figure(figure, path)
        plt.close(figure)


def _retrain(options: TuneOptions, space: SearchSpace, result: TuneResult) -> None:
    """The winning configuration(s) as normal `train` runs, test-evaluated, models logged: the
    best trial (or the picked one), or each Pareto-optimal trial of a multi-objective study."""
    data = dict(options.data)
    if options.retrain == "full":
        for key in SUBSET_OPTIONS:
            data.pop(key, None)
        fixed = {k: v for k, v in space.fixed.items() if k not in SUBSET_OPTIONS}
        space = SearchSpace(space.model, space.path, fixed, space.params, space.pruner)
    seeds = max(1, options.confirm_seeds)
    first: RepeatsResult | None = None
    for winner in result.winners:
        config = trial_config(options, space, winner.overrides, data)
        config.checkpoint = True
        log.info(
            "retraining trial %d's configuration (%s data, %d seed(s))",
            winner.trial,
            options.retrain,
            seeds,
        )
        retrained = train_seeds(
            config,
            seeds,
            tags={
                names.TAG_STUDY_NAME: options.name,
                names.TAG_TUNE_RUN_ID: result.parent_run_id,
                names.TAG_RETRAINED_TRIAL: str(winner.trial),
            },
            run_name=f"retrain-{options.name}"
            + (f"-trial-{winner.trial}" if len(result.winners) > 1 else ""),
        )
        run_id = retrained.run_id or retrained.runs[0].run_id
        result.retrain_run_ids.append(run_id)
        if first is None:  # the first winner: the best, or the picked one
            first = retrained
            result.retrain_run_id = run_id
            result.retrain_metrics = retrained.metrics or retrained.runs[0].metrics
            tracking.set_run_tags(result.parent_run_id, {names.TAG_RETRAIN_RUN_ID: run_id})
    if len(result.retrain_run_ids) > 1:
        tracking.set_run_tags(
            result.parent_run_id, {names.TAG_RETRAIN_RUN_IDS: ",".join(result.retrain_run_ids)}
        )
    if options.confirm_seeds and first is not None:
        defaults = trial_config(options, space, {}, data)
        defaults.checkpoint = True
        log.info("training the defaults at %d seeds, to confirm the winner", seeds)
        baseline = train_seeds(
            defaults,
            seeds,
            tags={names.TAG_TUNE_RUN_ID: result.parent_run_id},
            run_name=f"defaults-{options.name}",
        )
        result.confirmation = _confirm(result.parent_run_id, first, baseline)


def _confirm(parent_run_id: str, tuned: RepeatsResult, defaults: RepeatsResult) -> str:
    """Tuned against defaults on the same test digits, over seeds and digits; logged on the
    study's parent run and said in words."""
    tuned_correct = correct_matrix([r.predictions["test"] for r in tuned.runs])
    defaults_correct = correct_matrix([r.predictions["test"] for r in defaults.runs])
    result = compare_groups(tuned_correct, defaults_correct)
    if result.p_value >= ALPHA:
        verdict = "tie: the tuned configuration and the defaults cannot be told apart"
    elif not result.seed_noise:
        better = "tuned" if result.difference > 0 else "defaults'"
        verdict = (
            f"the {better} run is better on these digits; one seed each, so seed noise is "
            "unmeasured: confirm with --confirm-seeds 2 or more before choosing"
        )
    elif result.difference > 0:
        verdict = "the tuned configuration beats the defaults beyond noise"
    else:
        verdict = "the defaults beat the tuned configuration beyond noise"
    tracking.log_run_metrics(
        parent_run_id,
        {
            names.CONFIRM_DIFFERENCE: result.difference,
            names.CONFIRM_CI95_LOW: result.low,
            names.CONFIRM_CI95_HIGH: result.high,
            names.CONFIRM_P_VALUE: result.p_value,
        },
    )
    tracking.set_run_tags(
        parent_run_id,
        {
            names.TAG_CONFIRM_TEST: result.test,
            names.TAG_CONFIRM_VERDICT: verdict,
            names.TAG_DEFAULTS_RUN_ID: defaults.run_id,
        },
    )
    n = len(tuned.runs)
    text = (
        f"{verdict}: test accuracy tuned minus defaults {result.difference:+.4f}, 95 % interval "
        f"[{result.low:+.4f}, {result.high:+.4f}], p = {result.p_value:.3g} ({result.test}, "
        f"{n} seeds each)"
    )
    log.info("%s", text)
    return text


def _parent_params(options: TuneOptions) -> dict[str, Any]:
    """The invocation's settings as given (study name and storage go to tags: `mlflow run`
    logs its own defaults for them, which must not clash with resolved values)."""
    objectives = options.objectives
    if objectives is not None and not isinstance(objectives, str):
        objectives = ",".join(objectives)
    return {
        "model": options.model,
        "n_trials": options.n_trials,
        "timeout": options.timeout,
        "workers": options.workers,
        "sampler": options.sampler,
        "pruner": options.pruner,
        "seed": options.seed,
        "objectives": objectives,
        "pick": options.pick,
        "constraint": options.constraint,
        **{k: options.data.get(k) for k in DATA_OPTIONS if k != "seed"},
    }


def _epoch_budget(options: TuneOptions, space: SearchSpace) -> int | None:
    if "epochs" in space.params:
        return None
    return trial_config(options, space, {}).epochs


def _train_command(model: str, overrides: dict[str, Any]) -> str:
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in overrides.items())
    return f"python -m mnist_lab train --model {model} {flags}".strip()
