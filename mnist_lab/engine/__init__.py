"""The engine: the one training loop, the per-kind tasks, checkpoints and Ctrl-C handling.

`loop.fit` trains any model through a `Task` (`tasks.ClassificationTask`,
`detection.DetectionTask`) and reports each finished epoch to listeners; it knows nothing of
where the figures go. `device` picks the device and precision, `checkpoint` writes files
atomically, `interrupt` defers Ctrl-C to a step boundary. It may import config, data, models and
analysis, never mlflow or optuna: tracking and tuning listen to it from above.
"""
