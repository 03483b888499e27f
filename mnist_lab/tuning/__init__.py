"""Optuna tuning: search spaces as data, studies and their storage, the tuner.

`space` reads and checks `tuning/<model>.yaml` and suggests a trial's settings; `study` opens
the storage (SQLite, any SQLAlchemy URL, a journal file), the sampler and the pruner; `tuner`
runs trials as nested `train()` runs and retrains the winner. The only package that imports
optuna. It may import `train` and everything below it (tracking for the parent run's records).
"""
