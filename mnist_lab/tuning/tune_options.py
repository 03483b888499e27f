"""What `tune` takes: TuneOptions, each setting with its default, choices and help (the CLI's
flags are read from here), and the names the tuning modules share (the objectives are
names.METRICS's). Imports neither optuna nor
torch, so `tune --help` answers at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mnist_lab import names
from mnist_lab.settings import setting

DEFAULT_STORAGE = "sqlite:///optuna.db"  # in the working folder, beside MLflow's mlflow.db
SAMPLERS = ("tpe", "random", "nsga2")
PRUNERS = ("hyperband", "median", "none")
AUTO_PRUNER = "auto"  # hyperband where the study can prune, none where it cannot
RETRAIN_MODES = ("full", "subset", "none")
# Run settings every trial takes from the command line rather than the space file.
DATA_OPTIONS = ("device", "seed", "max_train_samples", "max_test_samples", "val_size", "data_dir")


@dataclass
class TuneOptions:
    model: str = setting("cnn", "the model whose space tuning/<model>.yaml is searched")
    n_trials: int = setting(20, "the study's size: a re-run runs only the trials still missing")
    timeout: float | None = setting(None, "stop starting trials after this many seconds")
    workers: int = setting(1, "processes running trials on the same storage")
    storage: str = setting(DEFAULT_STORAGE, "Optuna storage: an SQLAlchemy URL or journal:<file>")
    study_name: str | None = setting(
        None, "the study (unset: the model's name); the same name continues it"
    )
    sampler: str = setting("tpe", "seeded sampler (tpe is MOTPE with several objectives)", SAMPLERS)
    pruner: str = setting(
        AUTO_PRUNER,
        "auto: hyperband for val_accuracy alone, none otherwise (Optuna cannot prune a "
        "multi-objective study, so a pruner with several objectives is refused)",
        (AUTO_PRUNER, *PRUNERS),
    )
    seed: int = setting(0, "the sampler's seed, also the trials' training seed")
    data: dict[str, Any] = field(default_factory=dict)  # DATA_OPTIONS for every trial
    space_path: str | None = setting(None, "the search space file (unset: tuning/<model>.yaml)")
    retrain: str = setting(
        "full",
        "retrain the winner (the best or picked trial, or each Pareto-optimal one) on the full "
        "data, on the trials' subset, or not",
        RETRAIN_MODES,
    )
    confirm_seeds: int = setting(
        0,
        "with a retrain: train the winner and the defaults at K seeds each and test whether "
        "the tuned configuration beats the defaults beyond noise (0: off)",
    )
    heartbeat_interval: int = setting(60, "seconds between trial heartbeats on RDB storages")
    objectives: str | tuple[str, ...] | None = setting(
        None,
        f"what the study optimises: one to three of {', '.join(names.metric_names('objective'))}, "
        "comma-separated, each in its own direction (several: a Pareto front, and no pruning; "
        "unset: val_accuracy)",
    )
    pick: str | None = setting(
        None,
        "the trial to retrain by a rule, e.g. 'val_accuracy, inference_ms_per_image<=0.1' "
        "(unset: the best trial; with several objectives, every Pareto-optimal one); its "
        "budgets also steer the sampler, as --constraint's",
    )
    constraint: str | None = setting(
        None,
        "budgets the sampler steers trials into and every winner meets, e.g. "
        "'inference_ms_per_image<=0.1' (a comma list of metric<=value, also <, >=, >; unset: "
        "none beyond --pick's)",
    )

    @property
    def name(self) -> str:
        return self.study_name or self.model.replace(":", "-")
