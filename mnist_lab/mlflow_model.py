"""Where models logged before the package was grouped by concern look for their pyfunc loader.

Their `MLmodel` names `loader_module: mnist_lab.mlflow_model`; the flavor now lives in
`mnist_lab.tracking.pyfunc`. Nothing new imports this module.
"""

from mnist_lab.tracking.pyfunc import (  # noqa: F401  (the names old models and pickles use)
    DIGIT,
    PROB_COLUMNS,
    DigitClassifier,
    _load_pyfunc,
    as_digit_batch,
)
