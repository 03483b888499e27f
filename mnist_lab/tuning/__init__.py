"""Optuna tuning: search spaces as data, studies and their storage, the tuner.

`space` reads and checks `tuning/<model>.yaml` and suggests a trial's settings; `study` opens
the storage (SQLite, any SQLAlchemy URL, a journal file), the sampler and the pruner; `claim`
decides once-only work among processes sharing a study (a table of the project's own); `tuner`
runs trials as nested `train()` runs and retrains the winner(s); `objectives` is what a study
optimises and what a trial measures for it; `defaults` makes `experiments/<model>.yaml` trial 0;
`pareto` chooses the winners (best, Pareto-optimal or picked) and logs them. The only package
that imports optuna. It may import `train` and everything below it (tracking for the parent
run's records).
"""
