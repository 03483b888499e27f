"""`python -m mnist_lab.measure calibration`: how often the lab's intervals and tests are wrong,
by simulation with a known truth.

Digits have a difficulty and seeds an effect, both on the logit scale: run r of a configuration
gets digit d right with probability sigmoid(θ_d + u_r + shift), θ_d ~ N(μ, τ²) drawn afresh for
every simulated data set (the digit sample) and u_r ~ N(0, σ²) for every run (the seed). Two
configurations with the same shift do not differ; a configuration's true accuracy is
E sigmoid(θ + u + shift) over both, a run's is E sigmoid(θ + u_r + shift) over the digits
alone. Two regimes bracket what the lab sees (`REGIMES`): a 2-epoch ViT, where the seed moves
accuracy by points, and a trained CNN, where the digits do.

Every interval and test of analysis/statistics.py is run on the simulated data exactly as
`compare`, `benchmark`, `report`, `tune --confirm-seeds` and `register` call it, and the table
gives its false-positive rate, coverage and power with their Monte-Carlo standard errors,
beside Welch's t over the seeds' accuracies (which ignores the digit sample) for power.
`check` states the acceptance rules; the test suite runs a small version of the same thing.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import expit

from mnist_lab.analysis import statistics as st
from mnist_lab.measure import results_table

SEEDS = (2, 3, 5, 10)
PROMOTION_SCENARIOS = (  # (configurations, seeds each, epochs each): what register chooses among
    (1, 1, 1),
    (1, 5, 1),
    (10, 3, 1),
    (10, 3, 5),
)
VAL_DIGITS, TEST_DIGITS = 5000, 10_000  # the lab's default validation and test splits


@dataclass(frozen=True)
class Regime:
    """Digits θ ~ N(mean, difficulty_sd²), seeds u ~ N(0, seed_sd²) on the logit scale; `shift`
    is the better configuration's logit shift for power; `digits` the test digits scored."""

    name: str
    digits: int
    difficulty_mean: float
    difficulty_sd: float
    seed_sd: float
    shift: float


REGIMES = (
    # benchmark's 2-epoch ViT on 2 000 test digits: 45.9 %, 3.3 points between seeds
    Regime("undertrained ViT", 2000, -0.227, 1.5, 0.175, 0.25),
    # the default CNN on the 10 000 test digits: 99.35 %, 0.03-0.06 points between seeds
    Regime("trained CNN", TEST_DIGITS, 15.588, 6.0, 0.1, 0.35),
)

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(96)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def normal_mean_sigmoid(mean: float, sd: float) -> float:
    """E sigmoid(Z), Z ~ N(mean, sd²), by Gauss–Hermite quadrature."""
    return float((_WEIGHTS * expit(mean + sd * _NODES)).sum())


def configuration_accuracy(regime: Regime, shift: float = 0.0) -> float:
    """The true accuracy of a configuration: over digits and seeds (θ + u is normal)."""
    sd = math.hypot(regime.difficulty_sd, regime.seed_sd)
    return normal_mean_sigmoid(regime.difficulty_mean + shift, sd)


def run_accuracy(regime: Regime, seed_effect: float, shift: float = 0.0) -> float:
    """The true accuracy of one run (its seed effect fixed), over the digits."""
    return normal_mean_sigmoid(regime.difficulty_mean + seed_effect + shift, regime.difficulty_sd)


def draw_runs(
    rng: np.random.Generator, difficulty: np.ndarray, seed_effects: np.ndarray
) -> np.ndarray:
    """bool [runs, digits]: which digits each run gets right."""
    return rng.random((len(seed_effects), len(difficulty))) < expit(
        difficulty[None] + seed_effects[:, None]
    )


@dataclass
class Tally:
    """How often an event happened in `trials` simulated data sets."""

    hits: int = 0
    trials: int = 0

    def add(self, event: bool) -> None:
        self.hits += bool(event)
        self.trials += 1

    @property
    def rate(self) -> float:
        return self.hits / self.trials if self.trials else math.nan

    @property
    def mcse(self) -> float:
        return math.sqrt(self.rate * (1 - self.rate) / self.trials) if self.trials else math.nan


@dataclass
class Cell:
    """One row of the table: a method at one n in one regime."""

    regime: str
    comparison: str
    seeds: str
    configuration_level: bool
    false_positive: Tally
    coverage: Tally
    power: Tally
    welch_power: Tally
    half_width: list[float]

    def row(self) -> dict[str, object]:
        out: dict[str, object] = {
            "regime": self.regime,
            "comparison": self.comparison,
            "seeds": self.seeds,
            "configuration_level": self.configuration_level,
        }
        for name in ("false_positive", "coverage", "power", "welch_power"):
            tally: Tally = getattr(self, name)
            out[name], out[f"{name}_mcse"] = tally.rate, tally.mcse
        out["half_width"] = float(np.mean(self.half_width)) if self.half_width else math.nan
        return out


def _cell(regime: Regime, comparison: str, seeds: str, configuration_level: bool) -> Cell:
    return Cell(
        regime.name, comparison, seeds, configuration_level, Tally(), Tally(), Tally(), Tally(), []
    )


def _rejects(result: st.Difference) -> bool:
    return result.p_value < st.ALPHA


def simulate_comparisons(regime: Regime, reps: int, seed: int = 0) -> list[Cell]:
    """Every interval and test of a `compare` / `benchmark` table in one regime, `reps` data
    sets: one run, groups, a group against another, a run against a group, two single runs."""
    rng = np.random.default_rng(seed)
    most = max(SEEDS)
    truth, truth_better = (configuration_accuracy(regime, s) for s in (0.0, regime.shift))
    true_difference = truth_better - truth
    one = _cell(regime, "one run: Wilson (digits only)", "1", False)
    one_as_configuration = _cell(regime, "one run read as its configuration", "1", False)
    singles = _cell(regime, "two single runs: McNemar (digits only), its own null", "1 vs 1", False)
    two_seeds = _cell(regime, "two single runs: two seeds of one configuration", "1 vs 1", False)
    groups = {n: _cell(regime, "one group: t over seeds × digits", str(n), True) for n in SEEDS}
    pairs = {
        n: _cell(regime, "two groups: t over seeds × digits", f"{n} vs {n}", True) for n in SEEDS
    }
    run_vs = {
        n: _cell(regime, "one run against a group", f"1 vs {n}", True) for n in SEEDS if n > 2
    }
    for _ in range(reps):
        difficulty = rng.normal(regime.difficulty_mean, regime.difficulty_sd, regime.digits)
        effects = rng.normal(0.0, regime.seed_sd, (3, most))
        a = draw_runs(rng, difficulty, effects[0])
        b = draw_runs(rng, difficulty, effects[1])  # the same configuration as a
        better = draw_runs(rng, difficulty + regime.shift, effects[2])

        summary = st.summarize(a[:1])
        one.coverage.add(summary.low <= run_accuracy(regime, effects[0, 0]) <= summary.high)
        one_as_configuration.coverage.add(summary.low <= truth <= summary.high)
        one.half_width.append((summary.high - summary.low) / 2)
        same_seed = rng.random(a[:1].shape) < expit(difficulty + effects[0, 0])
        singles.false_positive.add(_rejects(st.compare_groups(a[:1], same_seed)))
        two_seeds.false_positive.add(_rejects(st.compare_groups(a[:1], b[:1])))

        for n in SEEDS:
            summary = st.summarize(a[:n])
            groups[n].coverage.add(summary.low <= truth <= summary.high)
            groups[n].half_width.append((summary.high - summary.low) / 2)
            _score(pairs[n], st.compare_groups(a[:n], b[:n]), None)
            found = st.compare_groups(better[:n], a[:n])
            _score(pairs[n], found, true_difference)
            with warnings.catch_warnings():  # two runs of a CNN can score the same
                warnings.simplefilter("ignore", RuntimeWarning)
                welch = stats.ttest_ind(better[:n].mean(1), a[:n].mean(1), equal_var=False)
            pairs[n].welch_power.add(welch.pvalue < st.ALPHA and welch.statistic > 0)
            if n in run_vs:
                _score(run_vs[n], st.compare_groups(b[:1], a[:n]), None)
                _score(run_vs[n], st.compare_groups(better[:1], a[:n]), true_difference)
    return [one, one_as_configuration, singles, two_seeds, *groups.values(), *pairs.values(),
            *run_vs.values()]  # fmt: skip


def _score(cell: Cell, result: st.Difference, true_difference: float | None) -> None:
    """Null (`true_difference` None): a rejection is a false positive. Otherwise: power is a
    rejection in the right direction, coverage the interval holding the true difference."""
    if true_difference is None:
        cell.false_positive.add(_rejects(result))
        cell.half_width.append((result.high - result.low) / 2)
        return
    cell.power.add(_rejects(result) and result.difference > 0)
    cell.coverage.add(result.low <= true_difference <= result.high)


def simulate_promotion(
    regime: Regime, reps: int, seed: int = 0, val_digits: int = VAL_DIGITS
) -> list[Cell]:
    """`register` after selection, every candidate exactly as good as the champion: choose the
    configuration with the best mean validation accuracy, its best seed, that seed's best
    epoch, then test it one-sided against the champion, on the validation digits it was chosen
    on (the rule `register` must not use) and on the test digits no choice touched (the rule
    it uses). Each epoch is an independent draw: the strongest selection there can be."""
    rng = np.random.default_rng(seed)
    cells = []
    for configurations, seeds, epochs in PROMOTION_SCENARIOS:
        label = f"{configurations} configuration(s) × {seeds} seed(s) × {epochs} epoch(s)"
        on_val = _cell(regime, "promotion tested on the validation digits it chose by", label, True)
        on_test = _cell(regime, "promotion tested on the test digits (register)", label, True)
        for _ in range(reps):
            val = expit(rng.normal(regime.difficulty_mean, regime.difficulty_sd, val_digits))
            test = expit(rng.normal(regime.difficulty_mean, regime.difficulty_sd, regime.digits))
            candidates = rng.random((configurations, seeds, epochs, val_digits)) < val
            scores = candidates.mean(-1)  # [configurations, seeds, epochs]
            best_epochs = scores.max(-1)
            k = int(best_epochs.mean(-1).argmax())
            s = int(best_epochs[k].argmax())
            e = int(scores[k, s].argmax())
            champion_val = rng.random(val_digits) < val
            champion_test, chosen_test = rng.random((2, regime.digits)) < test
            on_val.false_positive.add(
                st.promotion_test(candidates[k, s, e], champion_val)[2] < st.ALPHA
            )
            on_test.false_positive.add(st.promotion_test(chosen_test, champion_test)[2] < st.ALPHA)
        cells += [on_val, on_test]
    return cells


def simulate(reps: int, promotion_reps: int, seed: int = 0) -> pd.DataFrame:
    """The whole table: every regime, comparisons and promotions."""
    cells = []
    for k, regime in enumerate(REGIMES):
        cells += simulate_comparisons(regime, reps, seed + k)
        if regime.name == "trained CNN":
            cells += simulate_promotion(regime, promotion_reps, seed + 10 + k)
    return pd.DataFrame([cell.row() for cell in cells])


def check(table: pd.DataFrame, power_share: float = 0.9) -> list[str]:
    """The acceptance rules, each failure in words: every configuration-level false-positive
    rate ≤ α and coverage ≥ 1 − α within two Monte-Carlo standard errors (the promotion test on
    the test digits included), the digits-only McNemar at its level under its own null, and
    power at 5 seeds ≥ `power_share` of Welch's t over the seeds."""
    failures = []
    for row in table.itertuples():
        where = f"{row.regime}, {row.comparison}, {row.seeds}"
        judged = row.configuration_level and not row.comparison.startswith(
            "promotion tested on the val"
        )
        judged = judged or "its own null" in row.comparison
        if judged and row.false_positive > st.ALPHA + 2 * row.false_positive_mcse:
            failures.append(f"{where}: false positives {row.false_positive:.3f} > {st.ALPHA}")
        wilson = row.comparison.startswith("one run: Wilson")
        if (
            row.configuration_level or wilson
        ) and row.coverage < 1 - st.ALPHA - 2 * row.coverage_mcse:
            failures.append(f"{where}: coverage {row.coverage:.3f} < {1 - st.ALPHA}")
        if row.comparison.startswith("two groups") and row.seeds == "5 vs 5":
            tolerance = 2 * math.hypot(row.power_mcse, power_share * row.welch_power_mcse)
            if row.power < power_share * row.welch_power - tolerance:
                welch = f"{power_share} × Welch's {row.welch_power:.3f}"
                failures.append(f"{where}: power {row.power:.3f} < {welch}")
    return failures


def implied(regime: Regime, reps: int = 200, seed: int = 0) -> tuple[float, float]:
    """(mean accuracy, std between seeds) of single runs in a regime: what it stands for."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(regime.difficulty_mean, regime.difficulty_sd, regime.digits)
    runs = draw_runs(rng, difficulty, rng.normal(0.0, regime.seed_sd, reps))
    return float(runs.mean()), float(runs.mean(1).std(ddof=1))


COMMAND = "python -m mnist_lab.measure calibration --output-dir results"
PACKAGES = ("numpy", "scipy")
REPS, PROMOTION_REPS = 2000, 1000  # data sets a row: the full recipe
QUICK_REPS = 200  # --quick: data sets a row (a tenth), so the rates carry ~3x the error


def recipe(reps: int, promotion_reps: int) -> str:
    """`full` at the default data sets a row, else what was shortened."""
    if (reps, promotion_reps) == (REPS, PROMOTION_REPS):
        return results_table.FULL
    return f"{reps} data sets a row, {promotion_reps} a promotion row"


def markdown(table: pd.DataFrame, reps: int, promotion_reps: int) -> str:
    """The table as results/statistics.md prints it."""
    title = "# Statistics: how often the lab's intervals and tests are wrong"
    shortened = recipe(reps, promotion_reps)
    lines = [
        title + ("" if shortened == results_table.FULL else f" (quick: {shortened})"),
        "",
        f"Written by `{COMMAND}` on {date.today().isoformat()} with "
        f"{results_table.versions(PACKAGES)} (a simulation with a known truth: {reps} data sets "
        f"a row, {promotion_reps} for the promotion rows; no training, so no machine "
        "dependence). Each rate is followed by its Monte-Carlo standard error. "
        "[docs/comparisons.md](../docs/comparisons.md) says how to read them.",
        "",
        "| regime | stands for | digits | θ ~ N(μ, τ²) | seed effect sd | better config's shift | "
        "true accuracies |",
        "|---|---|---|---|---|---|---|",
    ]
    for regime in REGIMES:
        accuracy, spread = implied(regime)
        truth = configuration_accuracy(regime)
        better = configuration_accuracy(regime, regime.shift)
        lines.append(
            f"| {regime.name} | single runs at {accuracy:.2%}, {100 * spread:.2f} points between "
            f"seeds | {regime.digits} | N({regime.difficulty_mean}, {regime.difficulty_sd}²) | "
            f"{regime.seed_sd} | +{regime.shift} logit | {truth:.4f} vs {better:.4f} "
            f"({100 * (better - truth):+.2f} points) |"
        )
    lines += [
        "",
        "| regime | comparison | seeds | configuration-level | false positives | coverage | "
        "power | Welch's power | mean half-width |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table.itertuples():
        cells = [
            _rate(getattr(row, name), getattr(row, f"{name}_mcse"))
            for name in ("false_positive", "coverage", "power", "welch_power")
        ]
        half = "" if math.isnan(row.half_width) else f"±{100 * row.half_width:.2f} pt"
        level = "yes" if row.configuration_level else "no"
        lines.append(
            f"| {row.regime} | {row.comparison} | {row.seeds} | {level} | {' | '.join(cells)} "
            f"| {half} |"
        )
    lines += ["", "Half-widths of the 95 % intervals by seeds:", ""]
    lines += [half_width_table(table)]
    failures = check(table)
    lines += ["", "Acceptance (`measure.error_rates.check`): " + (
        "every rule holds." if not failures else "; ".join(failures))]  # fmt: skip
    return "\n".join(lines) + "\n"


def half_width_table(table: pd.DataFrame) -> str:
    """Mean half-width (points) of a configuration's interval and of a difference's, by seeds,
    in each regime: what n buys. One seed: Wilson's over the digits, no configuration-level
    test."""
    header = ["seeds"]
    for regime in REGIMES:
        header += [f"{regime.name}: one configuration", f"{regime.name}: a difference of two"]
    rows = []
    for n in (1, *SEEDS):
        cells = [str(n)]
        for regime in REGIMES:
            mine = table[table["regime"] == regime.name]
            if n == 1:
                wilson = mine[mine["comparison"].str.startswith("one run: Wilson")]
                cells += [f"±{100 * wilson['half_width'].iloc[0]:.2f} (digits only)", "no test"]
                continue
            group = mine[(mine["seeds"] == str(n)) & mine["comparison"].str.startswith("one group")]
            pair = mine[mine["seeds"] == f"{n} vs {n}"]
            widths = (group["half_width"].iloc[0], pair["half_width"].iloc[0])
            cells += [f"±{100 * w:.2f}" for w in widths]
        rows.append(cells)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _rate(value: float, mcse: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f} ± {mcse:.3f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lab.measure calibration")
    parser.add_argument("--reps", type=int, default=REPS, help=f"data sets a row (default {REPS})")
    parser.add_argument(
        "--promotion-reps",
        type=int,
        default=PROMOTION_REPS,
        help=f"data sets a promotion row (default {PROMOTION_REPS})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output-dir", type=Path, default=None,
        help="also write statistics.md and statistics.csv there (e.g. results/)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_REPS} data sets a row (said so in the files)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.reps = args.promotion_reps = QUICK_REPS
    table = simulate(args.reps, args.promotion_reps, args.seed)
    text = markdown(table, args.reps, args.promotion_reps)
    print(text, end="")
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "statistics.md").write_text(text)
        promotion = table["comparison"].str.startswith("promotion")
        provenance = {
            "n": np.where(promotion, args.promotion_reps, args.reps),
            results_table.MACHINE: "simulation (no machine dependence)",
            results_table.VERSIONS: results_table.versions(PACKAGES),
            results_table.DATE: date.today().isoformat(),
            results_table.RECIPE: recipe(args.reps, args.promotion_reps),
        }
        table.assign(**provenance).to_csv(
            args.output_dir / "statistics.csv", index=False, float_format="%.5g"
        )
    return 1 if check(table) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
