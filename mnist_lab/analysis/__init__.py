"""Pure functions over models and tensors: per-run metrics and the plots a run logs.

`metrics` summarises predictions (accuracy, F1, confusion matrix, per-class report); `plots`
draws a run's figures; robustness, calibration and explanations live here too. Everything takes
tensors or arrays and returns numbers, tensors or matplotlib figures. It may import the data,
models and config layers below it, never mlflow, optuna, the engine or anything above.
"""
