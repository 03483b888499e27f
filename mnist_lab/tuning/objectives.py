"""What a study optimises: one to three objectives, each in its own direction, and a pick rule.

    tune --objectives val_accuracy,inference_ms_per_image
         --pick "val_accuracy, inference_ms_per_image<=0.1"   (the most accurate within 0.1 ms)

Every objective is a number a trial can measure without the test split (names.METRICS marks
them `objective` and gives each its direction):

| objective               | measured                                                        |
|-------------------------|-----------------------------------------------------------------|
| val_accuracy            | the best epoch's validation accuracy (as always)                |
| val_robust_accuracy     | the best epoch's model on the validation digits under the       |
|                         | MNIST-C corruption suite (mean over corruptions)                |
| num_params              | the model's parameters                                          |
| train_flops_per_image   | FLOPs of one training step per image                            |
| inference_ms_per_image  | a forward pass over the validation digits at eval_batch_size:   |
|                         | the fastest of three passes                                     |
| train_time_s            | the trial's training wall time                                  |

The two measured after training (`MEASURED_AFTER`) cost an extra pass; a trial measures them only
when an objective or the pick rule needs them, and logs them to its run like the others.

Pruning: Optuna cannot prune a multi-objective study (`Trial.report` and `Trial.should_prune`
raise NotImplementedError), and the per-epoch validation accuracy a pruner compares is only the
objective when the study optimises val_accuracy alone. Every other study trains each trial for
its full epoch budget: the pruner is `none`, and asking for one is an error, not a silent no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import optuna
import torch

from mnist_lab import names
from mnist_lab.analysis.corruptions import DEFAULT_SEVERITY
from mnist_lab.analysis.robustness import evaluate_robustness, model_predict
from mnist_lab.analysis.selection import Constraint, Rule, direction, parse_rule
from mnist_lab.config import TrainConfig
from mnist_lab.engine.classification import CORRUPTION_SEED
from mnist_lab.engine.loop import TrainState
from mnist_lab.errors import ConfigError
from mnist_lab.models import is_detector
from mnist_lab.train import load_splits, make_task
from mnist_lab.tuning.tune_options import AUTO_PRUNER

DEFAULT_OBJECTIVES = (names.VAL_ACCURACY,)
MEASURED_AFTER = (names.VAL_ROBUST_ACCURACY, names.INFERENCE_MS_PER_IMAGE)
MAX_OBJECTIVES = 3
LATENCY_PASSES = 3
# A trial's metric each objective reads (val_accuracy: the best epoch's, not the last one's).
SOURCE = {names.VAL_ACCURACY: names.BEST_VAL_ACCURACY}
NOT_PRUNABLE = (
    "Optuna cannot prune a multi-objective study, and a pruner compares each epoch's "
    "val_accuracy, which is the objective only in a study of val_accuracy alone"
)


@dataclass(frozen=True)
class Objectives:
    """A study's objectives (in order), its pick rule and the pruner it can use."""

    chosen: tuple[str, ...] = DEFAULT_OBJECTIVES
    pick: Rule | None = None
    pruner: str = "hyperband"
    # Budgets the sampler steers by (--pick's and --constraint's): each trial stores how far it
    # is from each (`Trial.set_constraint`), and Optuna's best trial(s) are within them all.
    constraints: tuple[Constraint, ...] = ()

    @property
    def directions(self) -> list[str]:
        return [direction(name) for name in self.chosen]

    @property
    def multi(self) -> bool:
        return len(self.chosen) > 1

    @property
    def prunable(self) -> bool:
        return self.chosen == DEFAULT_OBJECTIVES

    @property
    def measured(self) -> tuple[str, ...]:
        """The metrics a trial must measure after training (objectives and pick alike)."""
        wanted = {
            *self.chosen,
            *(self.pick.metrics if self.pick else ()),
            *(c.metric for c in self.constraints),
        }
        return tuple(name for name in MEASURED_AFTER if name in wanted)

    def values(self, metrics: dict[str, float]) -> list[float]:
        return [metrics[name] for name in self.chosen]

    def __str__(self) -> str:
        return ", ".join(f"{n} ({direction(n)})" for n in self.chosen)


def parse_objectives(
    objectives: str | Sequence[str] | None,
    pick: str | None,
    pruner: str,
    constraint: str | None = None,
) -> Objectives:
    """The `--objectives` comma list (default val_accuracy), `--pick`, `--pruner` and
    `--constraint`, checked; ConfigError (exit 1, before any trial) for anything else."""
    if isinstance(objectives, str):
        objectives = [item.strip() for item in objectives.split(",") if item.strip()]
    chosen = tuple(objectives or DEFAULT_OBJECTIVES)
    allowed = names.metric_names("objective")
    for name in chosen:
        if name not in allowed:
            raise ConfigError(
                f"objectives: unknown objective {name!r}; choose up to {MAX_OBJECTIVES} of "
                f"{', '.join(allowed)}"
            )
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"objectives={','.join(chosen)}: an objective is named twice")
    if len(chosen) > MAX_OBJECTIVES:
        raise ConfigError(
            f"objectives={','.join(chosen)}: at most {MAX_OBJECTIVES} objectives (a Pareto "
            "front of more is hard to read and needs many more trials)"
        )
    rule = parse_rule(pick, allowed, flag="--pick") if pick else None
    budgets = ()
    if constraint:
        budgets = parse_rule(constraint, allowed, flag="--constraint", objective=False)
        budgets = budgets.constraints
    if rule is not None:
        # Budgets only: the first objective ranks; --constraint's bound the pick too.
        extra = tuple(c for c in budgets if c not in rule.constraints)
        rule = Rule(rule.objective or chosen[0], rule.constraints + extra)
    steering = rule.constraints if rule is not None else budgets
    prunable = chosen == DEFAULT_OBJECTIVES
    if pruner == AUTO_PRUNER:
        pruner = "hyperband" if prunable else "none"
    elif pruner != "none" and not prunable:
        raise ConfigError(
            f"pruner={pruner!r} with objectives {','.join(chosen)}: {NOT_PRUNABLE}. Leave "
            "--pruner out (or give none): every trial then trains its full epoch budget"
        )
    return Objectives(chosen, rule, pruner, steering)


def set_constraints(trial: optuna.Trial, objectives: Objectives, metrics: dict[str, float]) -> None:
    """Store how far `trial` is from each budget (<= 0: within it) for the sampler to steer by."""
    for budget in objectives.constraints:
        trial.set_constraint(str(budget), budget.violation(metrics))


def trial_metrics(train_metrics: dict[str, float]) -> dict[str, float]:
    """The objectives' values among what `train(evaluate_test=False)` logged."""
    found = {}
    for name in names.metric_names("objective"):
        source = SOURCE.get(name, name)
        if source in train_metrics:
            found[name] = float(train_metrics[source])
    return found


def measure(state: TrainState, config: TrainConfig, wanted: Iterable[str]) -> dict[str, float]:
    """`wanted` of MEASURED_AFTER for the trial's selected model (its best epoch's weights):
    inference latency and robust accuracy, both on the validation split, never the test."""
    wanted = [name for name in MEASURED_AFTER if name in set(wanted)]
    if not wanted:
        return {}
    model = state.model
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    device = next(model.parameters()).device
    splits = load_splits(config).to(device)
    found = {}
    if names.INFERENCE_MS_PER_IMAGE in wanted:
        task = make_task(config)
        _, val_loader, _ = task.loaders(splits)
        passes = [task.evaluate(model, val_loader, config.amp) for _ in range(LATENCY_PASSES)]
        per_image = [1000 * p.seconds / len(p.targets) for p in passes]
        found[names.INFERENCE_MS_PER_IMAGE] = min(per_image)
        found[names.INFERENCE_MS_PER_IMAGE_SLOWEST] = max(per_image)  # the plot's range
    if names.VAL_ROBUST_ACCURACY in wanted:
        samples = min(config.robustness_samples, len(splits.val_y))
        images = splits.val_x[:samples].unsqueeze(1).float().div(255)
        result = evaluate_robustness(
            model_predict(model),
            images,
            splits.val_y[:samples],
            seed=CORRUPTION_SEED,
            batch_size=config.eval_batch_size,
        )
        found[names.VAL_ROBUST_ACCURACY] = result.mean_accuracy(DEFAULT_SEVERITY)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return found


def check_measurable(objectives: Objectives, config: TrainConfig) -> None:
    """What a study's trials could not measure fails here, before any trial."""
    if names.VAL_ROBUST_ACCURACY in objectives.measured:
        if is_detector(config.model):
            raise ConfigError(
                f"{names.VAL_ROBUST_ACCURACY} is measured on single digits; {config.model} is a "
                "detector (its trials cannot be scored on the corruption suite)"
            )
        if config.robustness_samples < 1:
            raise ConfigError(
                f"{names.VAL_ROBUST_ACCURACY} needs robustness_samples >= 1 (validation digits per "
                f"corruption), got {config.robustness_samples}"
            )
