"""The one exception type users see.

A `LabError` message names the thing that is wrong and how to fix it; the CLI prints it without a
traceback and exits with status 1. Anything else escaping is a bug and keeps its traceback.
"""

# The CLI's exit statuses: argparse's 2 for a command line it cannot parse, 1 for a LabError
# (bad config, bad input, a store that cannot be reached), 130 (128 + SIGINT) for Ctrl-C or kill.
EXIT_LAB_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_STATUSES = (
    "exit status: 0 done; 1 a lab error (bad config, bad input, unreachable store: the message "
    "says which and how to fix it); 2 a usage error (the command line itself); 130 interrupted "
    "(Ctrl-C or kill)"
)


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
