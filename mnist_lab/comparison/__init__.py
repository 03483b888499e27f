"""Comparing runs already in MLflow, and the lab-table benchmark that trains every model.

`groups` picks runs and groups them by configuration; `significance` tests every pair;
`compare` builds the table (md, csv, html) and its figures (`comparison_figures`) and logs them
to a `kind=comparison` run; `benchmark` trains every architecture with its defaults, then
compares; `report` writes results/ tables from the runs.
It reads runs through `tracking` and trains through `train`; it imports neither mlflow nor optuna.
"""
