"""Choosing among runs or trials by a rule: at most one objective and any number of budgets.

    "val_accuracy, inference_ms_per_image<=0.1"   the most accurate within 0.1 ms a digit
    "inference_ms_per_image<=0.1, num_params<=1e5" only budgets: whatever the caller ranks by

Items are separated by commas; an item with `<=`, `<`, `>=` or `>` is a budget (constraint), a
bare metric name is the objective, optimised in that metric's own direction (names.METRICS). One
parser serves `tune --pick` (the trial to retrain) and `register --where` (the run to register);
each passes the metrics it can read (the table's objectives, or its `budget` metrics: a
finished run's cost, never a test-set score). Pure functions: no MLflow, no Optuna.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mnist_lab import names
from mnist_lab.errors import ConfigError
from mnist_lab.names import MAXIMIZE

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
STRICT_MARGIN = 1e-12  # the violation of a strict budget met with equality
_CONSTRAINT = re.compile(r"^([A-Za-z_][\w.]*)\s*(<=|>=|<|>)\s*(\S+)$")
_NAME = re.compile(r"^[A-Za-z_][\w.]*$")


def direction(metric: str) -> str:
    return names.METRICS[metric].direction


def label(metric: str) -> str:
    return names.METRICS[metric].label if metric in names.METRICS else metric


@dataclass(frozen=True)
class Constraint:
    metric: str
    op: str
    bound: float

    def holds(self, metrics: Mapping[str, float]) -> bool:
        """False where the metric is missing or NaN: an unmeasured value meets no budget."""
        value = metrics.get(self.metric)
        if value is None or math.isnan(value):
            return False
        return OPERATORS[self.op](value, self.bound)

    def violation(self, metrics: Mapping[str, float]) -> float:
        """By how much `metrics` miss the budget, as Optuna's constraints read it: <= 0 within
        it, the distance to the bound beyond it, inf where the metric was not measured."""
        value = metrics.get(self.metric)
        if value is None or math.isnan(value):
            return math.inf
        beyond = value - self.bound if self.op in ("<=", "<") else self.bound - value
        if self.holds(metrics):
            return min(beyond, 0.0)
        return max(beyond, STRICT_MARGIN)  # `<` at the bound itself misses it

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound:g}"


@dataclass(frozen=True)
class Rule:
    objective: str | None
    constraints: tuple[Constraint, ...] = ()

    @property
    def metrics(self) -> list[str]:
        """Every metric the rule reads, the objective first."""
        found = [self.objective] if self.objective else []
        return found + [c.metric for c in self.constraints if c.metric not in found]

    def feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(c.holds(metrics) for c in self.constraints)

    def select(self, candidates: Sequence[Mapping[str, float]]) -> list[int]:
        """Indices of the candidates within every budget, in their order."""
        return [i for i, metrics in enumerate(candidates) if self.feasible(metrics)]

    def best(self, candidates: Sequence[Mapping[str, float]]) -> int | None:
        """Index of the best feasible candidate by the objective (the first of equals), or
        None when none is within the budgets (or one lacks the objective)."""
        if self.objective is None:
            raise ValueError("a rule without an objective ranks nothing")
        sign = 1.0 if direction(self.objective) == MAXIMIZE else -1.0
        best, best_value = None, -math.inf
        for i in self.select(candidates):
            value = candidates[i].get(self.objective)
            if value is None or math.isnan(value):
                continue
            if sign * value > best_value:
                best, best_value = i, sign * value
        return best

    def __str__(self) -> str:
        return ", ".join(
            [*([self.objective] if self.objective else []), *map(str, self.constraints)]
        )


def parse_rule(
    text: str,
    allowed: Sequence[str],
    *,
    flag: str = "--pick",
    objective: bool = True,
) -> Rule:
    """Parse `text` into a Rule over the metrics `allowed`; ConfigError naming `flag`, the item
    and the fix for anything else. `objective=False`: budgets only (`register --where`)."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise ConfigError(f"{flag} {text!r}: give a metric and/or budgets such as metric<=value")
    chosen: str | None = None
    constraints: list[Constraint] = []
    for item in items:
        if not item:
            raise ConfigError(f"{flag} {text!r}: an empty item between commas")
        if match := _CONSTRAINT.match(item):
            metric, op, bound = match.groups()
            _check_name(metric, allowed, flag, text)
            try:
                value = float(bound)
            except ValueError:
                raise ConfigError(
                    f"{flag} {text!r}: {bound!r} in {item!r} is not a number"
                ) from None
            if math.isnan(value):
                raise ConfigError(f"{flag} {text!r}: a budget of nan holds for nothing")
            constraints.append(Constraint(metric, op, value))
        elif _NAME.match(item):
            _check_name(item, allowed, flag, text)
            if not objective:
                raise ConfigError(
                    f"{flag} {text!r}: {item!r} has no bound; {flag} takes budgets only, "
                    f"such as {item}<=value"
                )
            if chosen is not None:
                raise ConfigError(
                    f"{flag} {text!r}: two metrics to optimise ({chosen!r}, {item!r}); name "
                    "one, and give the others a bound (metric<=value)"
                )
            chosen = item
        else:
            raise ConfigError(
                f"{flag} {text!r}: cannot read {item!r}; write a metric name or "
                "metric<=value (also <, >=, >)"
            )
    return Rule(chosen, tuple(constraints))


def _check_name(metric: str, allowed: Sequence[str], flag: str, text: str) -> None:
    if metric not in allowed:
        raise ConfigError(
            f"{flag} {text!r}: unknown metric {metric!r}; choose from {', '.join(allowed)}"
        )


def gain(before: float, after: float, metric: str) -> float:
    """How much `after` improves on `before` in `metric`'s direction (negative: worse)."""
    return after - before if direction(metric) == MAXIMIZE else before - after
