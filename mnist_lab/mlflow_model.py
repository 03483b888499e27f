"""Kept for old models: the import path of their pyfunc loader.

Models logged before the package was grouped by concern name `loader_module:
mnist_lab.mlflow_model` in their `MLmodel`, and MLflow imports exactly that module to load
them. The loader lives in `mnist_lab.tracking.pyfunc` (and new models carry their own,
`mnist_lab.inference`); this module only re-exports the names those models use. Nothing new
imports it. Removing it would make every such model unloadable.
"""

from mnist_lab.tracking.pyfunc import (  # noqa: F401  (the names old models and pickles use)
    DIGIT,
    PROB_COLUMNS,
    DigitClassifier,
    _load_pyfunc,
    as_digit_batch,
)
