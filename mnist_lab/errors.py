"""The one exception type users see.

A `LabError` message names the thing that is wrong and how to fix it; the CLI prints it without a
traceback and exits with status 2. Anything else escaping is a bug and keeps its traceback.
"""


class LabError(Exception):
    """Bad input or environment: a config value, a data file, a weights file, a model name."""


class ConfigError(LabError):
    """A run, model or search-space parameter is missing, unknown or out of range."""


class DataError(LabError):
    """The MNIST files are missing, truncated or corrupt."""


class WeightsError(LabError):
    """Pretrained weights are missing, unreachable or do not fit the model."""


class ModelFileError(LabError):
    """A logged model's files cannot be trusted or rebuilt (changed weights, unknown format)."""


class StoreUnreachable(LabError):
    """The tracking server did not answer in time; what a run recorded waits in its spool."""
