"""Pure functions over models and tensors: per-run metrics, how a model fails, statistics, and
the figures a run logs.

- `metrics`: a set of predictions summarised (accuracy, F1, confusion matrix, per-class report);
  `predictions`: the per-digit predictions table every evaluated split logs;
- `corruptions`: the corruption suite (MNIST-C's and large shifts); `robustness`: a model's
  accuracy under it; `calibration`: ECE, Brier, temperature scaling; `explanations`: heat maps;
  `sources`: digits from fonts and handwriting;
- `statistics`: intervals and tests for accuracies over seeds and digits; `selection`: choosing
  runs or trials by an objective and budgets;
- `run_figures`: the figures every run logs; `pareto_figure`: a study's Pareto front.

Everything takes tensors or arrays and returns numbers, tensors or matplotlib figures. It may
import the data, models and config layers below it, never mlflow, optuna, the engine or anything
above.
"""
