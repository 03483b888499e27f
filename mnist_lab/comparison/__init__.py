"""Comparing runs already in MLflow, and the lab-table benchmark that trains every model.

`compare` picks runs, builds the table (md, csv, html) and its plots (`plots`) and logs them to
a `kind=comparison` run; `benchmark` trains every architecture with its defaults, then compares.
It reads runs through `tracking` and trains through `train`; it imports neither mlflow nor optuna.
"""
